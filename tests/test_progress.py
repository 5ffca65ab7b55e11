"""Progress from inside the long loops: one line, throttled, to the runner's terminal, a notebook or stderr."""

import io

from m3po_utils import progress as P
from m3po_utils import run as RUN


def test_the_line_says_where_the_loop_is_and_how_long_is_left():
    assert P.line("training the tiny LLaVA", 1200, 3000, elapsed=86.7, info={"loss": 0.41}) == \
        "training the tiny LLaVA: step 1200/3000, loss 0.41, 2:10 left"
    assert P.line("answering", 3, 3, unit="model", elapsed=75) == "answering: model 3/3, done in 1:15"
    assert P.line("judging", 5, None, unit="request") == "judging: request 5"
    assert P.fmt_clock(3723) == "1:02:03"


def test_a_loop_reports_to_the_runner_channel_throttled(tmp_path, monkeypatch):
    channel = tmp_path / "loops.txt"
    monkeypatch.setenv(P.ENV, str(channel))
    seen, write = [], P.write_channel

    def spy(text, path=None):
        seen.append(text)
        write(text, path)

    monkeypatch.setattr(P, "write_channel", spy)
    out = io.StringIO()
    with P.Progress(1000, "training", every=3600, stream=out) as bar:
        for _ in range(1000):
            bar.update(loss=0.5)
    assert len(seen) == 2                                     # the first line and the last, nothing between
    assert seen[-1].startswith("training: step 1000/1000, loss 0.5, done in")
    assert P.read_channel(channel) == seen[-1]
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
    silent = io.StringIO()
    for _ in P.Progress.over(range(3), "nothing", enabled=False, stream=silent):
        pass
    assert silent.getvalue() == ""


class _Bar:
    def __init__(self):
        self.postfix, self.lines = None, []

    def set_postfix_str(self, s):
        self.postfix = s

    def write(self, s, file=None):
        self.lines.append(s)


def test_the_runner_shows_the_kernels_progress_beside_the_notebook(tmp_path):
    channel = tmp_path / "loops.txt"
    bar = _Bar()
    loops = RUN._LoopProgress(bar, channel)
    loops.tty = True
    loops.notebook = "00_world"
    P.write_channel("training the tiny LLaVA: step 10/3000, loss 2.1, 4:58 left", str(channel))
    assert loops.poll() == "00_world · training the tiny LLaVA: step 10/3000, loss 2.1, 4:58 left"
    assert bar.postfix.endswith("4:58 left") and loops.poll() is None          # unchanged: nothing new
    log = _Bar()
    loops = RUN._LoopProgress(log, channel)                                     # a log, not a terminal
    loops.tty, loops.notebook = False, "00_world"
    assert loops.poll(now=100.0) is not None
    P.write_channel("training the tiny LLaVA: step 20/3000, loss 2.0, 4:50 left", str(channel))
    assert loops.poll(now=101.0) is None                                        # within PROGRESS_LOG_EVERY
    assert loops.poll(now=100.0 + RUN.PROGRESS_LOG_EVERY) is not None
    P.write_channel("training the tiny LLaVA: step 3000/3000, loss 0.4, done in 5:01", str(channel))
    assert loops.poll(now=100.0 + RUN.PROGRESS_LOG_EVERY + 1) is not None        # the last line always
    assert len(log.lines) == 3 and log.lines[-1] == "  00_world · training the tiny LLaVA: step 3000/3000, loss 0.4, done in 5:01"
