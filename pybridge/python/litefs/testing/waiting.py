"""Bounded waits: every loop here ends by its deadline, and a call on a wedged FUSE mount cannot
hang the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["call_with_timeout", "poll_until", "wait_until"]

T = TypeVar("T")


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls ``pred`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def poll_until(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Calls ``fn`` until it returns something other than None, and returns that; raises
    :class:`TimeoutError` naming ``what`` after ``timeout`` seconds. Exceptions of ``fn`` pass
    through (a check that must stop the wait raises)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(interval)


def call_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Runs ``fn`` on a daemon thread and waits at most ``timeout`` seconds for it, so that a
    file system call on a wedged mount cannot hang the test run. Re-raises ``fn``'s exception;
    raises :class:`TimeoutError` when it does not return in time (the thread is left behind)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s")
    if error:
        raise error[0]
    return result[0]
