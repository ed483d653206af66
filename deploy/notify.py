"""Webhook notifications of deploy and rollback outcomes (inventory `notify.webhooks`).

    promoted         a deploy passed its gate; the new release serves            (exit 0)
    rolled-back      a deploy failed after activation and the last good release
                     serves again (with the failing checks), or — blue-green — was
                     rejected before it took traffic (result `rejected`), or a manual
                     rollback succeeded                                           (exit 3 / 0)
    rollback-failed  the rollback failed or was impossible: a human is needed,
                     sent loud                                                   (exit 6)
    aborted          failed before activation; nothing live changed          (exit 2/4/5/7…)

Deciding is pure: `event_for` picks the event, `json_payload` / `slack_payload` build the
body, every string of it through the redaction filter. `announce` does the POSTs (short
timeout, no redirects) and reports each result to the reporter; a notification that fails
is a warning and never changes the operation's exit code. Webhook URLs are secrets: they
are read from local environment variables (`url_env`) and join the redaction filter as soon
as they are resolved, so no output, journal or payload ever shows one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from deploy.inventory import NotifyConfig
from deploy.model import Outcome
from deploy.redact import Redactor
from deploy.report import Reporter

EVIDENCE_LINES = 20  # the last lines of evidence a payload carries
LINE_CHARS = 500  # each evidence line is cut to this length
CHECK_VERDICTS = ("FAIL", "ERROR")  # first word of a failed smoke or preflight check line


@dataclass(frozen=True)
class Context:
    """Where and by whom the operation ran, for the payload."""

    env: str
    app: str
    host: str
    actor: str
    at: str  # ISO 8601, UTC
    run_url: str | None = None  # e.g. the GitHub Actions run


@dataclass(frozen=True)
class Notice:
    event: str
    outcome: Outcome
    context: Context

    @property
    def severity(self) -> str:
        if self.event == "rollback-failed":
            return "critical"
        return "info" if self.outcome.exit_code == 0 else "warning"

    @property
    def failed_checks(self) -> tuple[str, ...]:
        return failed_checks(self.outcome.evidence)


@dataclass(frozen=True)
class Hook:
    """One configured webhook with its URL read from the environment (None: not set)."""

    index: int
    url_env: str
    url: str | None
    format: str
    events: tuple[str, ...]
    timeout: float

    @property
    def label(self) -> str:
        return f"notify.webhooks[{self.index}] ({self.url_env})"

    def secret_values(self) -> tuple[str, ...]:
        """The URL, and the part after the host (where webhook tokens live), for masking."""
        if not self.url:
            return ()
        parts = urlsplit(self.url)
        tail = self.url.split(parts.netloc, 1)[-1] if parts.netloc else ""
        return (self.url, tail) if len(tail) >= 8 else (self.url,)


def event_for(outcome: Outcome) -> str | None:
    """The notification event of an operation's final outcome; None: nothing to announce
    (a dry run, or an operation that is not a deploy or rollback result)."""
    if outcome.result == "planned":
        return None
    if outcome.exit_code == 6:
        return "rollback-failed"
    if outcome.result in ("promoted", "rolled-back"):
        return outcome.result
    if outcome.result == "rejected" and outcome.exit_code == 3:
        return "rolled-back"  # the new release failed its gate; the previous one serves
    if outcome.exit_code != 0:
        return "aborted"
    return None


def failed_checks(evidence: tuple[str, ...]) -> tuple[str, ...]:
    """The failed checks named in evidence (smoke `FAIL  name  GET /x  detail`, preflight
    `FAIL name: detail`), in order, without the rollback's own gate lines."""
    seen: list[str] = []
    for line in evidence:
        words = line.split(maxsplit=1)
        if words and words[0] in CHECK_VERDICTS and line not in seen:
            seen.append(line)
    return tuple(seen)


def resolve(config: NotifyConfig, environ: Mapping[str, str]) -> tuple[Hook, ...]:
    return tuple(
        Hook(
            index=i,
            url_env=w.url_env,
            url=environ.get(w.url_env) or None,
            format=w.format,
            events=w.events,
            timeout=w.timeout,
        )
        for i, w in enumerate(config.webhooks)
    )


# ---------------------------------------------------------------------------- payloads


def _cut(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"


def _scrub(value: Any, redact: Redactor) -> Any:
    """Redact every string before serialising (a secret is masked before JSON escapes it)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_scrub(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, redact) for k, v in value.items()}
    return value


def headline(notice: Notice) -> str:
    o, c = notice.outcome, notice.context
    return f"{c.app} {c.env}: {o.op} {o.result} (exit {o.exit_code})"


def json_payload(notice: Notice, redact: Redactor) -> dict[str, Any]:
    o, c = notice.outcome, notice.context
    return dict(
        _scrub(
            {
                "source": "releasegate",
                "version": 1,
                "event": notice.event,
                "severity": notice.severity,
                "summary": headline(notice),
                "env": c.env,
                "app": c.app,
                "host": c.host,
                "op": o.op,
                "result": o.result,
                "exit_code": o.exit_code,
                "release": o.release,
                "live": o.live,
                "message": o.message,
                "failed_checks": [_cut(x) for x in notice.failed_checks],
                "evidence": [_cut(x) for x in o.evidence[-EVIDENCE_LINES:]],
                # blue/green: what each slot runs afterwards (live, warm, paused)
                "slots": [
                    {"slot": r.slot, "port": r.port, "role": r.role, "release": r.release}
                    for r in o.slots
                ],
                # many hosts: what each host runs afterwards
                "hosts": [
                    {
                        "host": h.host,
                        "before": h.before,
                        "live": h.live,
                        "result": h.result,
                        "verified": h.verified,
                    }
                    for h in o.hosts
                ],
                "actor": c.actor,
                "at": c.at,
                "run_url": c.run_url,
            },
            redact,
        )
    )


_SLACK_ICON = {
    "promoted": ":white_check_mark:",
    "rolled-back": ":leftwards_arrow_with_hook:",
    "rollback-failed": ":rotating_light:",
    "aborted": ":no_entry:",
}


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: str) -> str:
    return _slack_escape(text.replace("`", "'"))


def slack_payload(notice: Notice, redact: Redactor) -> dict[str, str]:
    """Slack-compatible `{"text": …}` (also Mattermost, Rocket.Chat, …). A failed rollback
    is loud: it mentions the channel and says a human is needed."""
    o, c = notice.outcome, notice.context

    def esc(text: str) -> str:
        return _slack_escape(redact(text))

    def code(text: str) -> str:
        return _slack_code(redact(_cut(text)))

    loud = notice.event == "rollback-failed"
    first = f"{_SLACK_ICON.get(notice.event, ':information_source:')} "
    if loud:
        first += "<!channel> *HUMAN NEEDED* — "
    first += f"*{esc(c.app)}* `{code(c.env)}`: {esc(o.op)} *{esc(o.result)}* (exit {o.exit_code})"
    lines = [first, esc(o.message)]
    checks = notice.failed_checks
    if checks:
        lines.append("*Failed checks*")
        lines += [f"• `{code(x)}`" for x in checks[:10]]
        if len(checks) > 10:
            lines.append(f"… and {len(checks) - 10} more")
    elif o.exit_code != 0 and o.evidence:
        tail = "\n".join(code(x) for x in o.evidence[-5:])
        lines.append(f"```{tail}```")
    facts = [
        f"release `{code(o.release)}`" if o.release else "",
        f"live `{code(o.live)}`" if o.live else "",
        *(f"{esc(r.slot)} {esc(r.role)} `{code(r.release or '-')}`" for r in o.slots),
        f"host {esc(c.host)}",
        f"by {esc(c.actor)}",
        f"<{redact(c.run_url)}|run>" if c.run_url else "",
    ]
    lines.append(" · ".join(f for f in facts if f))
    lines += [  # many hosts: one line each
        f"• {esc(h.host)} `{code(h.live or '?')}` {esc(h.result)}"
        + ("" if h.verified else " *NOT verified*")
        for h in o.hosts
    ]
    return {"text": "\n".join(lines)}


def body(hook: Hook, notice: Notice, redact: Redactor) -> bytes:
    payload = (
        slack_payload(notice, redact) if hook.format == "slack" else json_payload(notice, redact)
    )
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------- delivery

Post = Callable[[str, bytes, float], int]  # (url, JSON body, timeout) -> HTTP status


def post_webhook(url: str, data: bytes, timeout: float) -> int:
    """One POST with a short timeout; redirects are not followed (the URL is the secret)."""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        response = client.post(
            url,
            content=data,
            headers={"Content-Type": "application/json", "User-Agent": "releasegate"},
        )
        return response.status_code


def announce(
    hooks: tuple[Hook, ...],
    notice: Notice,
    *,
    reporter: Reporter,
    redact: Redactor,
    post: Post = post_webhook,
) -> int:
    """POST the notice to every hook subscribed to its event; report each delivery or
    failure (as a warning). Returns how many were delivered. Never raises for a webhook's
    failure: the operation's result is already decided."""
    delivered = 0
    for hook in hooks:
        if notice.event not in hook.events:
            continue
        problem = _deliver(hook, notice, redact, post)
        if problem is None:
            delivered += 1
            reporter.info(f"notified {hook.label}: {notice.event}")
        else:
            reporter.warn(
                redact(
                    f"{hook.label}: the {notice.event} notification was not delivered: "
                    f"{problem}. The {notice.outcome.op}'s result (exit "
                    f"{notice.outcome.exit_code}) is unchanged."
                )
            )
    return delivered


def _deliver(hook: Hook, notice: Notice, redact: Redactor, post: Post) -> str | None:
    if hook.url is None:
        return (
            f"the environment variable {hook.url_env} is not set here; export it with the "
            f"webhook URL (in CI: from a secret)"
        )
    if urlsplit(hook.url).scheme not in ("https", "http") or not urlsplit(hook.url).netloc:
        return f"{hook.url_env} does not hold an http(s):// URL; set it to the webhook URL"
    try:
        status = post(hook.url, body(hook, notice, redact), hook.timeout)
    except httpx.TimeoutException:
        return f"no answer within {hook.timeout:g}s"
    except (httpx.HTTPError, OSError) as exc:
        return f"{type(exc).__name__}: {redact(str(exc)) or 'connection failed'}"
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"the receiver answered HTTP {status} (a redirect, not followed); use its final URL"
    return f"the receiver answered HTTP {status}"
