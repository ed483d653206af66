"""The signals that stop an operation, and output that cannot stop the host being made safe.

A run is stopped by Ctrl-C (SIGINT), a cancelled job (SIGTERM) or a closed terminal or SSH
session (SIGHUP); each takes the same safe path (abort before the switch, roll back after).
SIGHUP left at its default would kill the process outright, halfway through a switch, and
under `nohup` it stays ignored.

A closed terminal, or a pipeline reader that died with Ctrl-C (`releasegate deploy | tee
log`), turns every later write to stdout/stderr into an error (EIO/EPIPE). An exception from a
print must never interrupt a rollback or the lock's release, so the CLI's standard streams
drop their output once it cannot be written: the journal on the host keeps the record.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def handling(handler: Handler, which: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """`handler` for each of `which` (main thread only), the previous handlers back at the end.
    A signal this process was started ignoring (SIGHUP under `nohup`, SIGINT in a background
    job) stays ignored."""
    old: dict[signal.Signals, Any] = {}
    for signum in which:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        old[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


class SturdyStream:
    """A text stream whose writes never raise: once the other end is gone, its file
    descriptor is pointed at /dev/null (so the interpreter's own flush at exit succeeds too)
    and the output is dropped."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def _gone(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._gone()
            with contextlib.suppress(OSError):
                self._stream.flush()  # what was buffered goes to /dev/null now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def sturdy_std_streams() -> None:
    """The CLI's stdout and stderr as SturdyStreams (once)."""
    if not isinstance(sys.stdout, SturdyStream) and sys.stdout is not None:
        sys.stdout = SturdyStream(sys.stdout)
    if not isinstance(sys.stderr, SturdyStream) and sys.stderr is not None:
        sys.stderr = SturdyStream(sys.stderr)
