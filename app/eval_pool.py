"""Concurrent request fan-out with a progress bar, for `lethe eval`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
X = TypeVar("X")


class Progress:
    """A progress bar on stderr."""

    def __init__(self, desc: str, total: int, unit: str = "req") -> None:
        self._bar: Any = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def update_to(self, value: int) -> None:
        """Move the bar to `value`."""
        self._bar.update(value - self._bar.n)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()


def parallel(
    pool: ThreadPoolExecutor, fn: Callable[[X], T], items: Sequence[X], desc: str
) -> list[T]:
    """Runs ``fn`` over ``items`` on ``pool``; results in input order, first error raised."""
    futures = [pool.submit(fn, item) for item in items]
    progress = Progress(desc, len(futures))
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            progress.update_to(done)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        progress.close()
    return [future.result() for future in futures]
