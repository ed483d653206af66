"""The error tree of releasegate; every error maps to one exit code (docs/exit-codes.md).

    ReleasegateError
    ├── ConfigError            2  invalid input or config; nothing contacted
    ├── LockHeld               4  another operation holds the host's lock
    │   └── LockLost              our lock's lease lapsed and it was broken; we stop
    ├── AbortedBeforeLive      5  failed before the point of no return; nothing live changed
    │   ├── ShipError
    │   ├── NotSwitched        (blue/green: nginx refused the switch; nothing switched)
    │   └── RemoteCommandError (when raised before the switch; the flow re-raises as abort)
    ├── RolledBack             3  failed after activation; the last good release serves again
    ├── HumanNeeded            6  rollback failed or impossible; the message says what is live
    ├── HostKeyRefused         7  the host's SSH key is unknown or changed
    └── Interrupted            130/143 after the safe cleanup for that phase

Steps raise; only `deploy.flow` decides whether an error aborts or rolls back and which of
these the operation ends with. Messages say what was being done, where, and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ReleasegateError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, evidence: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.evidence = evidence


class ConfigError(ReleasegateError):
    exit_code = 2


class RolledBack(ReleasegateError):
    exit_code = 3


class LockHeld(ReleasegateError):
    exit_code = 4


class LockLost(LockHeld):
    """Our lock was broken while we ran (its lease lapsed): nothing more is changed."""


class AbortedBeforeLive(ReleasegateError):
    exit_code = 5


class ShipError(AbortedBeforeLive):
    pass


class PreflightFailed(AbortedBeforeLive):
    """One or more preflight checks failed; nothing on the host was changed."""


class NotSwitched(AbortedBeforeLive):
    """Blue/green: the front door refused the switch (nginx -t, reload, allowlist) and put the
    previous upstream back: the new release never took traffic, nothing live changed."""

    def __init__(self, message: str, *, reason: str, evidence: tuple[str, ...] = ()) -> None:
        super().__init__(message, evidence=evidence)
        self.reason = reason


class HumanNeeded(ReleasegateError):
    exit_code = 6


class HostKeyRefused(ReleasegateError):
    exit_code = 7


class Interrupted(ReleasegateError):
    def __init__(self, message: str, *, signum: int, evidence: tuple[str, ...] = ()) -> None:
        super().__init__(message, evidence=evidence)
        self.exit_code = 128 + signum


class ConnectionLost(ReleasegateError):
    """SSH to the host dropped mid-operation; the flow turns it into abort or HumanNeeded."""

    exit_code = 6


class HostUnreachable(AbortedBeforeLive):
    """The first SSH connection failed (down, refused, auth): nothing was done on the host."""


@dataclass(frozen=True)
class CommandFailure:
    """What a failed remote command left behind, with secrets already masked."""

    display: str
    exit_code: int
    stderr_tail: str
    host: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class RemoteCommandError(ReleasegateError):
    """A remote command exited non-zero. Raised by Remote.run(check=True)."""

    exit_code = 5

    def __init__(self, failure: CommandFailure, *, what: str = "") -> None:
        doing = f"while {what}: " if what else ""
        msg = (
            f"{doing}`{failure.display}` on {failure.host or 'the host'} exited {failure.exit_code}"
        )
        if failure.stderr_tail.strip():
            msg += f": {failure.stderr_tail.strip()}"
        super().__init__(msg)
        self.failure = failure


class GateFailed(ReleasegateError):
    """A gate said no. Carries the probe history as evidence; the flow rolls back."""

    exit_code = 3

    def __init__(self, gate: str, reason: str, *, evidence: tuple[str, ...] = ()) -> None:
        super().__init__(f"{gate} gate failed: {reason}", evidence=evidence)
        self.gate = gate
        self.reason = reason


class Signalled(BaseException):
    """SIGTERM as an exception, like KeyboardInterrupt is for SIGINT (the CLI installs it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# What tar, cp, npm, sh and the kernel say when a filesystem is full (strerror and errno name).
_OUT_OF_SPACE = ("no space left on device", "enospc", "disk quota exceeded", "edquot")


def out_of_space_hint(message: str, root: str, env: str) -> str:
    """The fix, when a host step failed because the deploy root's filesystem is full: the
    command's own words (tar, npm) name a file, not the cause a user acts on."""
    if not any(words in message.lower() for words in _OUT_OF_SPACE):
        return ""
    return (
        f"\nThe filesystem of {root} is full (no space left on device). Fix: free space on "
        f"the host — logs, caches, other files; old releases are listed by `releasegate "
        f"releases {env}` and a lower app.keep_releases keeps fewer — check with "
        f"`df -h {root}`, then deploy again. The partial release was removed."
    )
