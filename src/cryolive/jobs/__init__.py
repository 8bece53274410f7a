"""Jobs: generators that yield immutable per-step results, and the job folders they write."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

Y = TypeVar("Y")
R = TypeVar("R")


def drain(gen: Generator[Y, Any, R], on_step: Callable[[Y], None] | None = None) -> tuple[list[Y], R]:
    """Run a job generator to its end: ``(every yielded step, the returned result)``.

    ``on_step`` is called with each step as it arrives (progress printing in the CLI and benchmarks).
    """
    steps: list[Y] = []
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return steps, stop.value
        steps.append(step)
        if on_step is not None:
            on_step(step)
