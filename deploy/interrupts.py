"""Signals during an operation: a second Ctrl-C/SIGTERM acknowledged while the host is made
safe, pending signals raised in long waits, and what an exception says about a signal."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from deploy import stops
from deploy.errors import ReleasegateError, Signalled
from deploy.report import Reporter

if TYPE_CHECKING:
    from deploy.deps import Deps


@contextlib.contextmanager
def shielded(reporter: Reporter) -> Iterator[None]:
    """While the host is being made safe, a second Ctrl-C/SIGTERM/SIGHUP is acknowledged, not
    obeyed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def acknowledge(signum: int, _frame: object) -> None:
        reporter.warn(
            f"{signal.Signals(signum).name} received while making the host safe; "
            f"finishing that first"
        )

    with stops.handling(acknowledge):
        yield


def raise_pending_signal(d: Deps) -> None:
    if d.signals:
        raise Signalled(d.signals.pop())


def signum_of(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, Signalled):
        return exc.signum
    return 0


def reason_of(exc: BaseException) -> str:
    signum = signum_of(exc)
    if signum:
        return f"interrupted by {signal.Signals(signum).name}"
    if isinstance(exc, ReleasegateError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
