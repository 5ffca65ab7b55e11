"""The α/δ explorer of notebook 04 in a real JupyterLab, driven by headless Chromium.

JupyterLab is started on 127.0.0.1 with a random token; Playwright drives the *system* Chromium (Debian's
``chromium`` package, no browser download). The test opens notebook 04 (parameterised for a copy of the smoke
run), runs every cell from the Run menu, types a new α into the slider's readout and checks that the statistics
and the example pairs in the page change to exactly what ``PairExplorer.update`` gives for that α. A screenshot
goes to ``<run>/browser/explorer.png``. Skipped, with the reason, only where Chromium or Playwright is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("M3PO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ALPHAS = (0.0, 2.0, 1.0, 0.25)   # the first of these whose stats and examples differ from the preset's α is typed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(run: Path):
    """The explorer notebook 04 builds, rebuilt here to know what the page must show."""
    from m3po_utils import selection as S
    from m3po_utils.config import setup_run
    from m3po_utils.widgets import PairExplorer, contrasting_prompts

    cfg, _ = setup_run(run, "smoke")
    table = S.scored_candidates(run)
    groups = S.group_candidates(table)
    sc = cfg.selection
    explorer = PairExplorer(groups, dict(zip(table.prompt_id, table.instruction, strict=True)),
                            truth=S.truth_by_prompt(groups, table), min_margin=sc.min_margin, seed=sc.seed,
                            example_prompts=contrasting_prompts(groups, sc.alpha, sc.delta, sc.min_margin, sc.seed, 5))
    return cfg, explorer


def _shown(state) -> tuple[dict[str, str], list[str]]:
    stats = {k: f"{v:.3f}" for k, v in state.stats.items()}
    rejected = [ex.get("rejected", "—") for ex in state.examples if "chosen" in ex]
    return stats, rejected


def prepare_notebook(smoke_run: Path, tmp: Path, name: str = "04_selection") -> tuple[Path, Path]:
    """A copy of the smoke run and notebook ``name`` parameterised for it, in a JupyterLab root folder."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    run = tmp / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("notebooks"))
    root = tmp / "lab"
    root.mkdir()
    nb = load_notebook_node(str(ROOT / "notebooks" / f"{name}.ipynb"))
    nb = parameterize_notebook(nb, {"preset": "smoke", "run_dir": str(run), "overrides": {}})
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / f"{name}.ipynb")
    return root, run


@contextlib.contextmanager
def jupyterlab(root: Path, tmp: Path):
    """JupyterLab on 127.0.0.1, a free port and a random token, serving ``root``; yields (url, token)."""
    token, port = secrets.token_hex(16), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "M3PO_STATIC_WIDGETS"}   # live widgets, not the figure
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")     # CI containers run as root
    log_path = tmp / "jupyterlab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start on {url}: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            yield url, token
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_alpha_slider_changes_stats_and_examples_in_jupyterlab(smoke_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt install chromium; .ci/run does it where apt is available)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    root, run = prepare_notebook(smoke_run, tmp_path)
    with jupyterlab(root, tmp_path) as (url, token):
        drive(url, token, run)


@contextlib.contextmanager
def failure_screenshot(page, run: Path, name: str):
    """On any failure inside, save the page as ``<run>/browser/<name>.png`` and say where, then re-raise."""
    try:
        yield
    except Exception:
        path = run / "browser" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(path))
        print(f"browser test failed; screenshot: {path}")
        raise


def open_and_run(page, url: str, token: str, name: str) -> None:
    """Open notebook ``name`` in JupyterLab on ``page`` and send Run All Cells (once the kernel is idle)."""
    from playwright import sync_api

    page.goto(f"{url}/lab/tree/{name}.ipynb?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.get_by_text("| Idle").first.wait_for(timeout=90_000)        # the kernel is connected
    for attempt in range(3):       # a Run All sent while the kernel session settles can be dropped
        page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function("() => [...document.querySelectorAll('.jp-InputPrompt')]"
                                   ".some(e => /\\[(\\d+|\\*)\\]/.test(e.textContent))", timeout=20_000)
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                raise


def drive(url: str, token: str, run: Path) -> None:
    """Open notebook 04, run it, type a new α and compare the page with ``PairExplorer.update``."""
    from playwright import sync_api

    cfg, explorer = _expected(run)
    alpha0 = cfg.selection.alpha
    before = _shown(explorer.update(alpha0, cfg.selection.delta))
    target = next((a for a in ALPHAS if all(x != y for x, y in zip(_shown(explorer.update(a, cfg.selection.delta)),
                                                                     before, strict=True))), None)
    assert target is not None, "no α in ALPHAS changes both the statistics and the examples of the smoke run"
    after = _shown(explorer.update(target, cfg.selection.delta))

    def page_state(page) -> tuple[dict[str, str], list[str]]:
        stats = dict(page.eval_on_selector_all(".m3po-stat", "els => els.map(e => [e.dataset.key, e.textContent])"))
        rejected = page.eval_on_selector_all(".m3po-example .m3po-rejected",
                                             "els => els.map(e => e.childNodes[0].textContent)")
        return stats, rejected

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            with failure_screenshot(page, run, "failure"):
                open_and_run(page, url, token, "04_selection")
                page.wait_for_selector(".m3po-stat", timeout=180_000)
                assert page_state(page) == before                      # the page shows the preset's α first
                slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="α")).first
                readout = slider.locator(".widget-readout")
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type(f"{target}")
                page.keyboard.press("Enter")
                page.wait_for_function(
                    "want => [...document.querySelectorAll('.m3po-stat')].some(e => e.dataset.key === want[0] "
                    "&& e.textContent === want[1])",
                    arg=next(([k, v] for k, v in after[0].items() if before[0][k] != v)), timeout=60_000)
                got = page_state(page)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
                for button in page.get_by_role("button", name="No", exact=True).all():
                    button.click()                                       # JupyterLab's news prompt, if shown
                shots = run / "browser"
                shots.mkdir(exist_ok=True)
                page.locator(".m3po-explorer-box").first.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "explorer.png"), full_page=False)
        finally:
            browser.close()
    assert got == after
    assert got[0] != before[0] and got[1] != before[1]
    assert (shots / "explorer.png").stat().st_size > 10_000


def test_token_viewer_follows_its_dropdown_in_jupyterlab(smoke_run, tmp_path):
    """Notebook 03's token viewer: picking another candidate shows exactly ``TokenViewer.update``'s tokens."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt install chromium; .ci/run does it where apt is available)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    root, run = prepare_notebook(smoke_run, tmp_path, "03_confidence")
    with jupyterlab(root, tmp_path) as (url, token):
        drive_tokens(url, token, run)


def drive_tokens(url: str, token: str, run: Path) -> None:
    from playwright import sync_api

    from m3po_utils.rundir import RunDir
    from m3po_utils.widgets import TokenViewer

    frame = RunDir(run).load_candidates().to_pandas()
    viewer = TokenViewer(frame, decode=str)                       # the page's token texts are not compared
    longest = frame.loc[frame["length"].idxmax()]
    first = viewer.update(longest["prompt_id"], int(longest["cand_idx"]))
    target = next(c for c in first.candidates
                  if viewer.update(first.prompt_id, c).logprobs != first.logprobs)
    want = viewer.update(first.prompt_id, target)

    def shown(page) -> list[str]:
        return page.eval_on_selector_all(".m3po-token", "els => els.map(e => e.dataset.logp)")

    def expect(state) -> list[str]:
        return [f"{lp:.4f}" for lp in state.logprobs]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            with failure_screenshot(page, run, "failure_tokens"):
                open_and_run(page, url, token, "03_confidence")
                page.wait_for_selector(".m3po-token", timeout=180_000)
                before = shown(page)
                box = page.locator(".m3po-tokens-box").first
                box.locator(".widget-dropdown", has=page.locator(".widget-label", has_text="candidate")) \
                    .locator("select").select_option(str(target))
                page.wait_for_function("want => JSON.stringify([...document.querySelectorAll('.m3po-token')]"
                                       ".map(e => e.dataset.logp)) === want", arg=json.dumps(expect(want), separators=(",", ":")),
                                       timeout=60_000)
                after = shown(page)
                sum_shown = page.eval_on_selector(".m3po-tokens .m3po-stat[data-key='logp_sum']", "e => e.textContent")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
                shots = run / "browser"
                shots.mkdir(exist_ok=True)
                box.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "token_viewer.png"), full_page=False)
        finally:
            browser.close()
    assert before == expect(first) and after == expect(want) and before != after
    assert sum_shown == f"{want.stats['logp_sum']:.3f}"
    assert (shots / "token_viewer.png").stat().st_size > 10_000
