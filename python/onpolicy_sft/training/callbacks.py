"""Trainer callbacks shared by the trainers."""

from __future__ import annotations

from typing import Any, TextIO

from transformers import TrainerCallback

from onpolicy_sft.progress import LineProgress

__all__ = ["ProgressLinesCallback"]


class ProgressLinesCallback(TrainerCallback):  # type: ignore[misc]
    """One line per ``every`` optimizer steps on stderr: step/max, steps/s, ETA, last loss.

    For runs whose stderr is not a terminal (transformers then has
    ``disable_tqdm`` and prints nothing between log records).
    """

    def __init__(self, every: int | None = None, stream: TextIO | None = None) -> None:
        self.every = every
        self.stream = stream
        self.bar: LineProgress | None = None
        self.loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            self.bar = LineProgress(
                state.max_steps or None,
                "train",
                "step",
                every=self.every,
                stream=self.stream,
                initial=state.global_step,  # a resumed run counts on from there
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            if self.loss is not None:
                self.bar.set_postfix_str(f"loss {self.loss:.4g}")
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
