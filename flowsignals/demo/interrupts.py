"""Ctrl-C and SIGTERM while the thread pool runs: noted at once, raised only where it is safe.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to be.
Inside ``ThreadPoolExecutor.submit`` that can be just after a lock was taken and before the
``try`` that gives it back (its idle semaphore's lock); every worker then blocks for ever
releasing that semaphore, and the interrupted demo hangs in ``shutdown`` instead of stopping.
So while the pool runs, the handlers only set a flag (no lock, no raise) and the main thread
raises ``KeyboardInterrupt`` itself between steps, waiting in short slices to notice it soon.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: Longest the main thread waits without looking at the flag (seconds).
_SLICE_SECONDS = 0.05

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredInterrupt:
    """Context manager: within it, SIGINT and SIGTERM raise KeyboardInterrupt only at checks.

    Outside the main thread (where handlers cannot be installed) it changes nothing. A signal
    that is ignored when it is entered stays ignored. If a signal came and no check raised it,
    leaving the block raises it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if exc_type is None:
            self.check()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread at an arbitrary point: it must take no lock and raise nothing.
        self.requested = True

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal came."""
        if self.requested:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """``time.sleep``, ended early by a signal (with KeyboardInterrupt)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.check()
            time.sleep(min(remaining, _SLICE_SECONDS))
        self.check()

    def results(self, futures: Sequence[Future[T]]) -> list[T]:
        """The futures' results in order, ended early by a signal (with KeyboardInterrupt)."""
        pending = set(futures)
        while pending:
            self.check()
            _, pending = wait(pending, timeout=_SLICE_SECONDS)
        self.check()
        return [future.result() for future in futures]
