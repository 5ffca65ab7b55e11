"""What every widget of the series shares: a pure ``update()``, a static figure under papermill, sliders in a lab.

A widget is a class with three pure methods — ``update(**values)`` returns a frozen state computed from its inputs
and the data it was built with, ``figure(state)`` draws that state with matplotlib, ``html(state)`` writes it as
HTML — and ``controls(**initial)``, the ipywidgets that set ``update``'s keyword arguments. :meth:`Widget.show`
wires them together in JupyterLab; where no widget frontend is attached (papermill, the series runner, which sets
``M3PO_STATIC_WIDGETS=1``), it displays the static figure for the initial values instead, so an executed notebook
still shows what the widget would.
"""

from __future__ import annotations

import os
from typing import Any

from m3po_utils.plots import audit
from m3po_utils.plots.candidates import printable

STATIC_ENV = "M3PO_STATIC_WIDGETS"


def static_default() -> bool:
    return os.environ.get(STATIC_ENV) == "1"


def short(text: str, n: int) -> str:
    """``text`` on one line, at most ``n`` characters, with what the figure font cannot draw shown as ``·``."""
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= n else text[: n - 1] + "…"


class Widget:
    css = "m3po-widget"          # the box's CSS class (the browser test finds widgets by it)

    def update(self, **values) -> Any:           # pragma: no cover - every widget defines it
        raise NotImplementedError

    def figure(self, state):                      # pragma: no cover
        raise NotImplementedError

    def html(self, state) -> str:                 # pragma: no cover
        raise NotImplementedError

    def controls(self, **initial) -> dict:        # pragma: no cover
        raise NotImplementedError

    def link(self, controls: dict) -> None:
        """Hook for controls that depend on each other (a prompt list that follows a family filter)."""

    def prompt_label(self, prompt_id: str) -> str:
        """How a drop-down names a prompt: its instruction (where the widget knows it), then its id."""
        text = (getattr(self, "instruction_of", None) or {}).get(prompt_id, "")
        return f"{short(text, 50)} · {prompt_id}" if text else str(prompt_id)

    def control_names(self, **initial) -> list[str]:
        """The labels of the live controls, in the order they are laid out."""
        return [getattr(c, "description", "") or key for key, c in self.controls(**initial).items()]

    def caption(self, initial: dict) -> str:
        """The line under a static widget: that it is one, its controls, the values shown, and how to open it live."""
        shown = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                          for k, v in initial.items() if v is not None)
        return (f"*A live widget, shown here as a still{f' for {shown}' if shown else ''}. Its controls: "
                f"{', '.join(self.control_names(**initial))}. To use them, open this notebook in JupyterLab "
                "(`./m3po lab`) and run it from the top.*")

    def show(self, static: bool | None = None, **initial):
        """Controls in JupyterLab; the static figure for ``initial`` under papermill (or when ``static=True``).

        Either way the widget displays itself and returns None, so a call inside an ``if`` block shows too."""
        from IPython.display import display

        if static is None:
            static = static_default()
        import matplotlib.pyplot as plt

        state = self.update(**initial)
        if static:
            from IPython.display import HTML, Markdown

            fig = self.figure(state)
            plt.close(fig)       # shown once, here, not again by the inline backend
            audit.note(fig)
            display(fig)
            display(HTML(self.html(state)))      # what the live widget lists under its figure
            display(Markdown(self.caption(initial)))
            return None
        import ipywidgets as w

        controls = self.controls(**initial)
        self.link(controls)
        out, info = w.Output(), w.HTML()

        def redraw(*_):
            st = self.update(**{k: c.value for k, c in controls.items()})
            with out:
                out.clear_output(wait=True)
                fig = self.figure(st)
                display(fig)
                plt.close(fig)
            info.value = self.html(st)      # last: when the HTML shows the new state, the figure does too

        for ctl in controls.values():
            ctl.observe(redraw, names="value")
        redraw()
        rows = list(controls.values())
        box = w.VBox([w.HBox(rows[i:i + 3]) for i in range(0, len(rows), 3)] + [out, info])
        box.add_class(self.css + "-box")
        display(box)
        return None


def labelled(options, label=None) -> list:
    """``options`` as a drop-down's items: ``(label(o), o)`` pairs when ``label`` is given, else the options."""
    options = list(options)
    return [(label(o), o) for o in options] if label is not None else options


def dropdown(options, value, description: str, label=None):
    """A drop-down over ``options`` that starts at ``value`` (else the first); ``label(option)`` is what it shows."""
    import ipywidgets as w

    options = list(options)
    return w.Dropdown(options=labelled(options, label), value=value if value in options else options[0],
                      description=description)
