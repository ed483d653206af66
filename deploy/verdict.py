"""Verdicts a human has to give: the sticky needs-human mark and what to tell the operator.

Deciding code only (plain values in, plain values out); deploy.flow records and reports.

- `failure_kind` names the kind of a gate failure ("readiness answered 503") so that the
  fallback failing the *same way* as the new release can be said plainly: then the cause is
  probably outside the releases (a database, the disk, a shared/ file), and walking back
  through older releases would only mark innocent ones bad.
- `mark_commands` are the exact commands written into the mark and shown on every refusal.
"""

from __future__ import annotations

import re

from deploy.errors import GateFailed
from deploy.model import NeedsHuman

_LAST_ANSWER = re.compile(r"last: (\d{3}) in ")
_PROCESS = re.compile(r"the process is (\w[\w -]*?)(?: \(|$)")


def failure_kind(exc: BaseException) -> str | None:
    """What kind of answer made a gate fail, without the details that differ between two
    releases (timings, ids, counts); None when the failure is not a gate's verdict."""
    if not isinstance(exc, GateFailed):
        return None
    reason = exc.reason
    if exc.gate == "ready":
        answer = _LAST_ANSWER.search(reason)
        if answer:
            return f"readiness answered HTTP {answer.group(1)}"
        if "last: no answer" in reason:
            return "readiness got no answer"
        process = _PROCESS.search(reason)
        if process:
            return f"the process is {process.group(1)}"
    if exc.gate == "smoke":
        _, _, names = reason.partition(" failed: ")
        return f"smoke checks failed: {names}" if names else "smoke checks failed"
    # Any other verdict: the gate and its reason with numbers and release ids blanked out.
    generic = re.sub(r"\d{14}-[0-9a-f]{7,40}", "<release>", reason)
    return f"{exc.gate} gate: " + re.sub(r"\d+(?:\.\d+)?", "N", generic)


def same_cause(first: BaseException, second: BaseException) -> str | None:
    """The shared kind of failure when both failed their gate the same way, else None."""
    a, b = failure_kind(first), failure_kind(second)
    return a if a is not None and a == b else None


def shared_cause_sentence(failed: str, fallback: str, kind: str) -> str:
    return (
        f"{fallback} failed its gate the same way {failed} did ({kind}): the cause is "
        f"probably outside the releases — a shared dependency such as a database, the disk, "
        f"the network or a file under shared/ — and older releases would most likely fail "
        f"the same way. Fix that first."
    )


def mark_commands(env: str, *, live: str | None, others: list[str]) -> tuple[str, ...]:
    """What an operator runs to look, then to clear the mark (each with why, as a comment)."""
    out = [
        f"releasegate status {env}  # what is live, the mark and every release's state",
        f"releasegate history {env} --limit 20  # what happened, newest first",
    ]
    if live:
        out += [
            f"releasegate rollback {env} --to {live}  # once the cause is fixed: gate {live} "
            f"again; the mark clears if it passes",
            f'releasegate resolve {env} --mark-good {live} --reason "…"  # you checked {live} '
            f"yourself: record it good and clear the mark",
        ]
    if others:
        out.append(
            f"releasegate rollback {env} --to {others[0]}  # go to another good release "
            f"instead (gated; clears the mark if it passes)"
        )
    out.append(
        f'releasegate resolve {env} --reason "…"  # clear the mark without a verdict (the '
        f"next deploy gates an unverified current first)"
    )
    return tuple(out)


def refusal(mark: NeedsHuman, *, what: str, host: str) -> str:
    """The message of an operation refused while the mark stands."""
    live = mark.live or "nothing verified"
    return (
        f"{host} needs a human (marked {mark.since} by {mark.actor}): {mark.reason} "
        f"Until the mark is cleared releasegate takes no automatic step there — no deploy, no "
        f"automatic rollback, no re-gating of the unverified current. {what} was refused and "
        f"nothing on the host was changed; live: {live}. Run one of the commands below."
    )


def after_failed_revert(failed: str, fallback: str, live: str | None, unread: str | None) -> str:
    """What serves after an automatic rollback failed, as read back from the host — never
    assumed: the switch back may not have happened (the fallback's directory was removed or
    is incomplete), or the host may not answer at all."""
    if unread is not None:
        return (
            f"What `current` points to could not be read ({unread}): the host may serve "
            f"{failed} or {fallback}, neither verified healthy. A human is needed."
        )
    if live == fallback:
        return f"`current` points to {fallback} but it is not verified healthy: a human is needed."
    return (
        f"The switch back did not happen: `current` still points to {live or 'nothing'}, not "
        f"verified healthy. A human is needed."
    )
