"""Progress of long jobs as log lines: where no terminal shows a bar (docker logs, a service, CI)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The one progress type: wraps an iterable of work items in a progress display (a bar, log lines, a
# job's row) and yields them: (items, description, total or None) -> items.
Progress = Callable[[Iterable[T], str, int | None], Iterable[T]]

EVERY_SECONDS = 30.0
# "epoch k/n", and where a resumed run starts inside epoch k, ", resumed at step d of s" (s: the steps of
# a whole epoch, which the later epochs take)
_EPOCH = re.compile(r"epoch (\d+)/(\d+)(?:, resumed at step \d+ of (\d+))?")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def reporting(
    items: Iterable[T],
    description: str,
    total: int | None,
    emit: Callable[[str], None],
    *,
    every: float = EVERY_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yield ``items``, calling ``emit`` with a line (step, rate, ETA) at most ``every`` seconds apart
    while they last, and once at the end. For "epoch k/n" descriptions the ETA also covers the
    remaining epochs, at most (early stopping may end sooner)."""
    start = last = clock()
    done = 0
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every:
            last = now
            emit(_line(description, done, total, now - start))
    emit(f"{description}: {done} steps in {duration(clock() - start)}")


def _line(description: str, done: int, total: int | None, elapsed: float) -> str:
    per = elapsed / done
    rate = f"{1 / per:.2f} steps/s" if per < 1 else f"{per:.1f} s/step"
    if not total:
        return f"{description}: {done} steps, {rate}"
    left = per * (total - done)
    eta = f"ETA {duration(left)}"
    epoch = _EPOCH.search(description)
    if epoch and int(epoch[1]) < int(epoch[2]):
        more = int(epoch[2]) - int(epoch[1])
        whole = int(epoch[3]) if epoch[3] else total
        eta += f" (all {epoch[2]} epochs: at most {duration(left + more * per * whole)})"
    return f"{description}: {done}/{total} ({100 * done / total:.0f}%), {rate}, {eta}"
