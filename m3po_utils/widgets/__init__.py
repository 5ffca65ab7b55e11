"""The series' widgets, one per notebook where a learner would reach for one.

Every widget is a class with a pure ``update()`` that returns a frozen state, a ``figure(state)`` and an
``html(state)``; ``show()`` puts controls on it in JupyterLab and draws the static figure under papermill
(:mod:`m3po_utils.widgets.base`). Notebook 01: :class:`CandidateInspector`; 02: :class:`MasWeights`;
03: :class:`TokenViewer`; 04: :class:`PairExplorer`.
"""

from m3po_utils.widgets.base import STATIC_ENV, Widget
from m3po_utils.widgets.candidates import CandidateInspector
from m3po_utils.widgets.confidence import TokenViewer
from m3po_utils.widgets.mas import MasWeights
from m3po_utils.widgets.selection import ExplorerState, PairExplorer, contrasting_prompts

__all__ = ["STATIC_ENV", "CandidateInspector", "ExplorerState", "MasWeights", "PairExplorer", "TokenViewer",
           "Widget", "contrasting_prompts"]
