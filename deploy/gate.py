"""Gates that decide promotion. They take their inputs as functions (probe, process snapshot),
so they know nothing about SSH or PM2, and a fake clock runs them without waiting."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import httpx

from deploy.clock import Clock
from deploy.errors import GateFailed, RemoteCommandError
from deploy.inventory import VersionConfig
from deploy.model import IdentityFacts, Probe, ProcessSnapshot
from smoke import answer
from smoke.model import printable


@dataclass(frozen=True)
class ReadyPolicy:
    deadline: float
    interval: float
    successes: int
    max_restarts: int
    stable_for: float = 0.0  # seconds with no restart and no pid change, every instance up
    instances: int = 1  # how many instances must be online at the end of the window


# A process-manager read gets the time left before the gate's deadline, but at least this
# much: a read started just before the deadline still gets a fair chance to answer.
MIN_READ_TIMEOUT = 1.0


# A readiness answer's body is read up to this size, and for no longer than the probe's
# timeout in all: the client's timeouts bound each read, not the whole answer, so a release
# that streams its answer without end would otherwise hold the gate past its deadline.
MAX_PROBE_BODY = 1024 * 1024


@dataclass(frozen=True)
class ProbeAnswer:
    status: int
    headers: httpx.Headers
    text: str
    unended: str  # why the body was cut ("" when it ended)


def bounded_get(client: httpx.Client, path: str, headers: dict[str, str]) -> ProbeAnswer:
    """GET `path` and read its body within MAX_PROBE_BODY and the client's read timeout in
    all (smoke.answer.get: the same bounded reader smoke's checks use). Raises
    httpx.HTTPError when there is no answer."""
    try:
        got = answer.get(client, path, headers=headers, max_bytes=MAX_PROBE_BODY)
    except answer.UnusableAnswer as exc:
        if exc.cut == "size":
            why = f"its body went on past {MAX_PROBE_BODY // 1024} KiB"
        elif exc.cut == "time":
            why = f"its body was still coming after {client.timeout.read or 30.0:g}s"
        else:
            why = exc.detail
        return ProbeAnswer(exc.status or 0, httpx.Headers(), "", why)
    return ProbeAnswer(got.response.status_code, got.response.headers, got.text, "")


def probe_http(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[str, str]:
    """One readiness probe: ("ok"|"fail"|"error", detail). The client carries the timeout."""
    started = time.perf_counter()
    try:
        got = bounded_get(client, path, headers)
    except httpx.TimeoutException:
        return "error", f"no answer: timed out after {time.perf_counter() - started:.1f}s"
    except httpx.HTTPError as exc:
        return "error", f"no answer: {type(exc).__name__} {str(exc)[:120]}".rstrip()
    ms = (time.perf_counter() - started) * 1000
    if got.unended:
        return "fail", f"{got.status} in {ms:.0f} ms, but {got.unended} (an answer must end)"
    if 200 <= got.status < 300:
        return "ok", f"{got.status} in {ms:.0f} ms"
    text = printable(" ".join(got.text.split()))[:120]
    return "fail", f"{got.status} in {ms:.0f} ms {text}".rstrip()


@dataclass
class _Window:
    """The stability window: opened by a snapshot with every instance up, it holds while later
    snapshots show the same pids and restart counts."""

    opened_at: float
    snapshot: ProcessSnapshot


def wait_ready(
    probe: Callable[[], tuple[str, str]],
    process: Callable[[float], ProcessSnapshot] | None,
    policy: ReadyPolicy,
    clock: Clock,
    on_probe: Callable[[Probe], None] | None = None,
    closing: Callable[[float, tuple[int, ...]], ProcessSnapshot] | None = None,
    first: Callable[[float], ProcessSnapshot] | None = None,
) -> tuple[list[Probe], ProcessSnapshot | None]:
    """Promote after `successes` consecutive ok probes AND a stability window of `stable_for`
    seconds, both within the deadline. The two run together, not one after the other.

    The window opens on a process snapshot in which every expected instance is online with a
    pid, and holds while no instance restarts and no pid changes; it is judged by reading the
    process state when it opens and when it has lasted `stable_for` (and after every probe
    that was not ok), so a healthy gate reads the process manager twice. A change reopens the
    window; an instance not up (stopping, launching, waiting restart, pid 0) closes it until
    one is seen up again.

    Fails fast — without waiting out the deadline — when the process manager reports the app
    errored/stopped/missing or more than `max_restarts` restarts since the gate started.
    `process(timeout)` is given the time left before the deadline (at least
    MIN_READ_TIMEOUT); a read that overruns it fails the gate. `closing(timeout, pids)`, when
    given, makes the read that may close the window instead of `process`, with the pids the
    window opened on: the window only holds if they are the pids of that read, so the flow
    reads their identity in the same round trip. `first`, when given, makes the gate's first
    read instead of `process` (in place, it was made at the end of the activation's batch).

    Probes keep a fixed cadence — one every `interval` from the gate's start — so the time a
    probe or a process read takes (a slow link) is not added to every interval.
    """
    start = clock.monotonic()
    history: list[Probe] = []
    baseline: ProcessSnapshot | None = None
    window: _Window | None = None
    unsettled = "the process state was never read"

    def elapsed() -> float:
        return clock.monotonic() - start

    def note(detail: str) -> None:
        item = Probe(at=elapsed(), outcome="info", detail=detail)
        history.append(item)
        if on_probe is not None:
            on_probe(item)

    def read(final: bool, initial: bool) -> ProcessSnapshot:
        assert process is not None
        timeout = max(policy.deadline - elapsed(), MIN_READ_TIMEOUT)
        try:
            if final and closing is not None and window is not None:
                return closing(timeout, window.snapshot.pids)
            if initial and first is not None:
                return first(timeout)
            return process(timeout)
        except RemoteCommandError as exc:
            history.append(Probe(at=elapsed(), outcome="error", detail=f"process: {exc.message}"))
            raise GateFailed(
                "ready",
                f"the process manager did not answer: {exc.message}",
                evidence=_lines(history),
            ) from None

    def look(final: bool = False, initial: bool = False) -> ProcessSnapshot | None:
        nonlocal baseline, window, unsettled
        if process is None:
            return None
        snap = read(final, initial)
        if baseline is None:
            baseline = snap
        restarts = snap.restarts_since(baseline)
        if snap.status in {"errored", "stopped", "missing"} or restarts > policy.max_restarts:
            why = (
                f"the process is {snap.status}"
                if snap.status in {"errored", "stopped", "missing"}
                else f"the process restarted {restarts} times during the gate"
            )
            history.append(
                Probe(at=elapsed(), outcome="error", detail=f"process: {why}: {snap.describe()}")
            )
            raise GateFailed("ready", f"{why} (fail fast)", evidence=_lines(history))
        if window is not None and snap.fingerprint() != window.snapshot.fingerprint():
            unsettled = (
                f"instances changed during the stability window: "
                f"{window.snapshot.describe()} -> {snap.describe()}"
            )
            note(f"process: {unsettled}")
            window = None
        if not snap.all_up(policy.instances):
            unsettled = (
                f"not every instance is online ({len(snap.instances)} of "
                f"{policy.instances} expected): {snap.describe()}"
            )
            if window is not None:
                note(f"process: {unsettled}")
            window = None
        elif window is None:
            window = _Window(opened_at=elapsed(), snapshot=snap)
        return snap

    look(initial=True)
    streak = 0
    tick = clock.monotonic()  # when the current probe was due
    while True:
        outcome, detail = probe()
        item = Probe(at=elapsed(), outcome=outcome, detail=detail)
        history.append(item)
        if on_probe is not None:
            on_probe(item)
        streak = streak + 1 if outcome == "ok" else 0
        if outcome != "ok":
            look()
        elif streak >= policy.successes:
            if process is None:
                return history, None
            if window is None:
                look()  # instances were not all up: see whether they are now (opens the window)
            elif elapsed() - window.opened_at >= policy.stable_for:
                held = window
                snap = look(final=True)
                if window is held:
                    return history, snap
        tick = max(tick + policy.interval, clock.monotonic())
        if tick - start > policy.deadline:
            if streak >= policy.successes:
                why = (
                    f"the window opened at +{window.opened_at:.1f}s, too late ({unsettled})"
                    if window is not None
                    else unsettled
                )
                raise GateFailed(
                    "ready",
                    f"ready, but not stable for {policy.stable_for:g}s within "
                    f"{policy.deadline:g}s: {why}",
                    evidence=_lines(history),
                )
            probes = [p for p in history if p.outcome != "info"]
            fails = sum(1 for p in probes if p.outcome == "fail")
            errors = sum(1 for p in probes if p.outcome == "error")
            raise GateFailed(
                "ready",
                f"no {policy.successes} consecutive successes within {policy.deadline:g}s "
                f"({len(probes)} probes: {fails} fail, {errors} error; last: {detail})",
                evidence=_lines(history),
            )
        clock.sleep(tick - clock.monotonic())


def stability(snapshot: ProcessSnapshot | None, policy: ReadyPolicy) -> str:
    if snapshot is None:
        return "process state not read"
    return (
        f"{len(snapshot.instances)} instance(s) online, no restart and no pid change for "
        f"{policy.stable_for:g}s ({snapshot.describe()})"
    )


def closing_identity(
    snapshot: ProcessSnapshot, read: tuple[ProcessSnapshot, IdentityFacts | None] | None
) -> IdentityFacts | None:
    """The identity facts read with the gate's closing snapshot, if that read is `snapshot`
    and it covered every pid of it; None: read them on their own."""
    if read is None or read[0] is not snapshot or read[1] is None:
        return None
    facts = read[1]
    if not snapshot.pids or any(pid not in facts.cwds for pid in snapshot.pids):
        return None
    return facts


def check_identity(
    snapshot: ProcessSnapshot,
    facts: IdentityFacts,
    expected: PurePosixPath,
    *,
    through_current: bool = False,
) -> str:
    """The running processes really run `expected` (catches PM2 keeping the old code). The
    release directory is compared as the host resolves it, so a deploy root reached through a
    symlink is the same directory as the cwds /proc shows. `through_current`: the release
    serves through `current`, which must still name it — a release that removes or re-points
    the link as it starts would otherwise be promoted with `current` leading elsewhere."""
    if through_current and facts.current is not None:
        link = facts.current.rstrip("/")
        if link != f"releases/{expected.name}" and link != str(expected):
            now = "missing" if link == "-" else f"-> {link}"
            raise GateFailed(
                "identity",
                f"current no longer names {expected.name} (now {now}): something on the host "
                f"changed the link after the switch — the release itself as it started?",
            )
    if not snapshot.pids:
        raise GateFailed("identity", f"no running process (status {snapshot.status})")
    want = {str(expected)}
    if facts.release_dir:
        want.add(facts.release_dir)
    cwds = facts.cwds
    wrong = {pid: cwd for pid, cwd in cwds.items() if cwd not in want}
    missing = [pid for pid in snapshot.pids if pid not in cwds]
    if wrong or missing:
        shown = ", ".join(f"pid {pid} runs in {cwd}" for pid, cwd in sorted(wrong.items()))
        resolved = (
            f" (= {facts.release_dir} on the host)"
            if facts.release_dir and facts.release_dir != str(expected)
            else ""
        )
        raise GateFailed(
            "identity",
            f"expected every process to run in {expected}{resolved}, but "
            f"{shown or 'cwd unreadable'}" + (f"; no cwd for pids {missing}" if missing else ""),
        )
    return f"{len(snapshot.pids)} process(es) run in {expected}"


# ---------------------------------------------------------------------------- version identity


@dataclass(frozen=True)
class Expected:
    """What a release must report: its id, the revision it was built from, its commit's tags."""

    release_id: str
    revision: str | None
    tags: tuple[str, ...] = ()


def reported_version(
    client: httpx.Client, settings: VersionConfig, headers: dict[str, str]
) -> str | None:
    """The value the app reports as its version (a JSON field or a header of `path`); None
    when the field is null (the app does not know its version)."""
    where = f"GET {settings.path}"
    try:
        got = bounded_get(client, settings.path, headers)
    except httpx.HTTPError as exc:
        raise GateFailed(
            "identity", f"{where} got no answer: {type(exc).__name__} {str(exc)[:120]}"
        ) from None
    if got.unended:
        raise GateFailed("identity", f"{where} answered, but {got.unended} (an answer must end)")
    if not 200 <= got.status < 300:
        raise GateFailed("identity", f"{where} answered {got.status}, not 2xx")
    if settings.header:
        value = got.headers.get(settings.header)
        if value is None:
            raise GateFailed("identity", f"{where} has no {settings.header} header")
        return value.strip()
    try:
        node: object = json.loads(got.text)
    except (ValueError, RecursionError):  # nested deeper than Python's stack: not usable
        raise GateFailed("identity", f"{where} did not answer JSON") from None
    assert settings.field is not None
    for key in settings.field.split("."):
        if not isinstance(node, dict) or key not in node:
            raise GateFailed("identity", f"{where} has no field {settings.field!r} in its JSON")
        node = node[key]
    if node is None:
        return None
    if not isinstance(node, str | int | float) or isinstance(node, bool):
        raise GateFailed(
            "identity", f"{where} field {settings.field!r} is {type(node).__name__}, not a string"
        )
    return str(node).strip()


def check_version(reported: str | None, expect: str, expected: Expected, source: str) -> str:
    """The reported version equals the release's id, revision (full or >= 7-char short sha)
    or one of its tags. A mismatch fails the identity gate with both values in the evidence."""
    if reported is None:
        shown, reported = "(null)", ""
    else:
        shown = printable(reported if len(reported) <= 80 else reported[:79] + "…")
    if expect == "release_id":
        wanted = expected.release_id
        ok = reported == wanted
    elif expect == "revision":
        if not expected.revision:
            raise GateFailed(
                "identity",
                f"the revision of {expected.release_id} is unknown (its manifest has none), so "
                f"the version its {source} reports cannot be checked",
            )
        wanted = expected.revision
        short = reported.lower()
        ok = len(short) >= 7 and _HEX.match(short) is not None and wanted.startswith(short)
    else:
        if not expected.tags:
            raise GateFailed(
                "identity",
                f"{expected.release_id} was built from a commit without a tag, but "
                f"health.version.expect is tag; tag the commit, or expect release_id or revision",
                evidence=(f"reported: {shown}", "expected: a tag of the commit (it has none)"),
            )
        wanted = " or ".join(expected.tags)
        ok = reported in expected.tags
    if not ok:
        raise GateFailed(
            "identity",
            f"the app reports version {shown!r} ({source}), but {expected.release_id} has "
            f"{expect.replace('_', ' ')} {wanted!r}: other code answers",
            evidence=(f"reported: {shown}", f"expected: {wanted}"),
        )
    return f"{source} reports {shown} = the {expect.replace('_', ' ')} of {expected.release_id}"


_HEX = re.compile(r"^[0-9a-f]+\Z")


def _lines(history: list[Probe], first: int = 5, last: int = 15) -> tuple[str, ...]:
    """The start and the end of the probe history: how it began and how it ended."""
    if len(history) <= first + last:
        return tuple(p.line() for p in history)
    skipped = len(history) - first - last
    return (
        *(p.line() for p in history[:first]),
        f"… {skipped} more probes …",
        *(p.line() for p in history[-last:]),
    )
