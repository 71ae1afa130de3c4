"""Progress lines for logs: what a run prints when stderr is not a terminal."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from onpolicy_sft.progress import LineProgress, format_eta, progress

LINE = re.compile(
    r"^rewrite self: (\d+)/100 problems \((\d+)%\), [\d.e+-]+ problems/s, ETA (\?|\d+m\d\ds), self=\d+$"
)


def test_line_progress_prints_a_line_every_n_with_rate_and_eta() -> None:
    out = io.StringIO()
    bar = LineProgress(100, "rewrite self", "problem", every=25, stream=out)
    for i in range(100):
        bar.update(1)
        bar.set_postfix_str(f"self={i}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert [int(LINE.match(x).group(1)) for x in lines] == [25, 50, 75, 100], lines
    assert lines[-1].split("(")[1].startswith("100%")


def test_a_long_gap_prints_a_line_before_n_is_reached() -> None:
    out = io.StringIO()
    bar = LineProgress(1000, "train", "step", every=500, interval=0.0, stream=out)
    bar.update(3)
    assert out.getvalue().startswith("train: 3/1000 steps (0%)")


def test_eta_format_and_the_non_terminal_choice() -> None:
    assert format_eta(4 * 3600 + 61) == "4h01m01s" and format_eta(59.6) == "1m00s"
    assert format_eta(float("nan")) == "?"
    # pytest captures stderr: not a terminal, so plain lines
    assert isinstance(progress(10, "x"), LineProgress)


def test_trainer_callback_counts_on_from_a_resumed_step() -> None:
    from onpolicy_sft.training.callbacks import ProgressLinesCallback

    out = io.StringIO()
    cb = ProgressLinesCallback(every=10, stream=out)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=100, global_step=40)
    cb.on_train_begin(None, state, None)
    for step in range(41, 61):
        state.global_step = step
        cb.on_log(None, state, None, logs={"loss": 1.0 / step})
        cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert [x.split(" steps")[0] for x in lines] == ["train: 50/100", "train: 60/100"]
    assert "ETA" in lines[0] and lines[-1].endswith("loss 0.01667")
