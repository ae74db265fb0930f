"""Progress of a training run: one event type for the rich display, the JSON-lines log and the job callback."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class ProgressEvent:
    """One optimiser step (``kind="step"``) or the end of an epoch (``kind="epoch"``, with validation metrics when
    the epoch was evaluated). ``loss`` is the step's batch loss, or the epoch's mean training loss."""

    kind: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    lr: float
    clips_per_s: float
    elapsed_s: float
    eta_s: float
    val_top1: float | None = None
    val_top5: float | None = None
    val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def count_bar(enabled: bool, *, transient: bool = True) -> Progress:
    """A "description ▕bar▏ done/total ETA" bar for work counted in items (clips rendered, runs finished); use as a
    context manager; a no-op display when not ``enabled``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=transient,
    )


def format_eta(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class TrainDisplay:
    """A rich progress bar over optimiser steps showing epoch, loss, lr, clips/s, ETA and the last val top-1.

    A no-op when disabled, or when the console is not a terminal (logs and pipes stay clean).
    """

    def __init__(
        self, title: str, epochs: int, total_steps: int, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.title, self.epochs, self.total_steps = title, epochs, total_steps
        console = console or Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self.val = ""
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(title, total=total_steps, info="")

    def __enter__(self) -> TrainDisplay:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.val_top1 is not None:
            self.val = f" · val top-1 {event.val_top1:.1%}"
        info = (
            f"epoch {event.epoch}/{event.epochs} · loss {event.loss:.3f} · lr {event.lr:.2e} · "
            f"{event.clips_per_s:.1f} clips/s · ETA {format_eta(event.eta_s)}{self.val}"
        )
        self.progress.update(self.task, completed=event.step, info=info)
