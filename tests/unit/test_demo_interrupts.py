"""The demo's deferred interrupt: a signal is noted at once and raised only at a check."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from flowsignals.demo.interrupts import DeferredInterrupt


@pytest.fixture(autouse=True)
def python_sigint_handler() -> Iterator[None]:
    # Whatever started pytest, these tests start from Python's own handler and leave it so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def send_soon(signum: signal.Signals, delay: float = 0.1) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_block_is_raised_only_at_a_check(signum: signal.Signals) -> None:
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), signum)
        # The handler has run by now (it runs before the next bytecode), and raised nothing.
        for _ in range(1000):
            pass
        assert interrupt.requested is True
        interrupt.check()
        pytest.fail("check() did not raise")  # pragma: no cover


def test_leaving_the_block_raises_a_signal_no_check_saw() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_signal_no_interrupt_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with DeferredInterrupt() as interrupt:
        interrupt.check()
        interrupt.sleep(0.01)
    assert interrupt.requested is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_sleep_ends_early_on_a_signal() -> None:
    timer = send_soon(signal.SIGINT)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt() as interrupt:
        interrupt.sleep(60)
    timer.join()
    # Ended by the signal, not by the 60 s (a behaviour, not a speed: the bound is generous).
    assert time.monotonic() - started < 30


def test_results_come_in_order_and_a_signal_ends_the_wait_for_them() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = [pool.submit(pow, n, 2) for n in range(5)]
        with DeferredInterrupt() as interrupt:
            assert interrupt.results(done) == [0, 1, 4, 9, 16]
        blocked: Future[bool] = pool.submit(release.wait, 60)
        timer = send_soon(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt), DeferredInterrupt() as interrupt:
            interrupt.results([blocked])
        timer.join()
        assert not blocked.done()
        release.set()
        assert blocked.result() is True


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with DeferredInterrupt() as interrupt:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        interrupt.sleep(0.05)
    assert interrupt.requested is False
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_the_main_thread_it_installs_nothing() -> None:
    seen: list[object] = []

    def enter() -> None:
        with DeferredInterrupt() as interrupt:
            seen.append(signal.getsignal(signal.SIGINT))
            interrupt.check()

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
