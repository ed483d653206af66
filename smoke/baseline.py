"""Perf baselines, the run history and regression detection (docs/smoke.md, "Baselines and
regressions"). Deciding code only: the caller reads and writes the files.

A **baseline** is a JSON file: per endpoint (keyed `pack/endpoint`) p50/p95/p99, error rate,
request count and concurrency, plus when, where from (base URL, release and revision the app
reported) and on which machine it was measured. Saved from one run, or from the per-endpoint
median of the last K runs of the history (runs are noisy; a median baseline is steadier).

The **history** is a JSON-lines file, one line per run (the same per-endpoint figures), the
newest last, at most HISTORY_KEEP lines. It counts consecutive runs over the policy and feeds
the trend chart.

The **policy**: an endpoint is *over* in a run when its p95 is worse than the baseline's by
more than `p95_increase_pct` percent AND more than `p95_increase_ms` milliseconds (both, so a
1 ms endpoint does not alarm on +0.6 ms and a slow one does not alarm on +3 %), or its error
rate is above the baseline's by more than `error_rate_increase`. It has **regressed** when it
is over in this run and the `consecutive - 1` runs before it (runs of the history recorded
since the baseline was saved).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smoke.policy import Policy as Policy

if TYPE_CHECKING:  # annotations only: reading a baseline needs no HTTP client
    from smoke.perf import PerfResult


BASELINE_FORMAT = "releasegate-perf-baseline/1"
RUN_FORMAT = "releasegate-perf-run/1"
HISTORY_KEEP = 30


class BaselineError(Exception):
    """A baseline or history file that cannot be used (exit 2, nothing contacted)."""


@dataclass(frozen=True)
class Figures:
    """One endpoint's figures in one run (or a baseline)."""

    key: str  # "pack/endpoint"
    method: str
    path: str
    requests: int
    concurrency: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def endpoint(self) -> str:
        return self.key.partition("/")[2]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
        }


@dataclass(frozen=True)
class Run:
    """One perf run: a history line, or what a baseline was made from."""

    at: str  # ISO 8601 UTC, seconds
    endpoints: Mapping[str, Figures]
    release: str | None = None
    revision: str | None = None
    base_url: str = ""


@dataclass(frozen=True)
class Baseline:
    source: str  # the file it was read from (for messages)
    saved_at: str
    endpoints: Mapping[str, Figures]
    release: str | None = None
    revision: str | None = None
    base_url: str = ""
    runs: int = 1
    machine: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointVerdict:
    """One endpoint of this run against the baseline.

    status: ok | over (over the policy, not yet on enough consecutive runs) | regressed |
    new (not in the baseline: nothing to compare with)."""

    key: str
    status: str
    p95_ms: float | None
    baseline_p95_ms: float | None = None
    p95_delta_ms: float | None = None
    p95_delta_pct: float | None = None
    error_rate: float = 0.0
    baseline_error_rate: float | None = None
    streak: int = 0  # consecutive runs over the policy, this one included
    reasons: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return self.key.partition("/")[2]

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "p95_ms": _round(self.baseline_p95_ms),
            "p95_delta_ms": _round(self.p95_delta_ms),
            "p95_delta_pct": None if self.p95_delta_pct is None else round(self.p95_delta_pct, 1),
            "error_rate": self.baseline_error_rate,
            "error_rate_delta": None
            if self.baseline_error_rate is None
            else round(self.error_rate - self.baseline_error_rate, 6),
            "streak": self.streak,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Comparison:
    baseline: Baseline
    policy: Policy
    endpoints: tuple[EndpointVerdict, ...]
    missing: tuple[str, ...] = ()  # in the baseline, not measured in this run
    notes: tuple[str, ...] = ()  # e.g. settings that differ from the baseline's

    @property
    def regressed(self) -> tuple[EndpointVerdict, ...]:
        return tuple(v for v in self.endpoints if v.status == "regressed")

    def of(self, key: str) -> EndpointVerdict | None:
        return next((v for v in self.endpoints if v.key == key), None)

    def as_json(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "file": b.source,
            "saved_at": b.saved_at,
            "release": b.release,
            "revision": b.revision,
            "runs": b.runs,
            "policy": self.policy.as_json(),
            "regressed": [v.endpoint for v in self.regressed],
            "over": [v.endpoint for v in self.endpoints if v.status == "over"],
            "new": [v.endpoint for v in self.endpoints if v.status == "new"],
            "missing": [k.partition("/")[2] for k in self.missing],
            "notes": list(self.notes),
        }


def exit_code(result: PerfResult, comparison: Comparison | None, mode: str) -> int:
    """informational: 0; blocking: 1 on a threshold breach or a confirmed regression."""
    if mode != "blocking":
        return 0
    return 1 if result.breached or (comparison is not None and comparison.regressed) else 0


# ---------------------------------------------------------------- from a run --


def run_of(result: PerfResult, at: str) -> Run:
    return Run(
        at=at,
        endpoints={
            f"{e.pack}/{e.endpoint}": Figures(
                key=f"{e.pack}/{e.endpoint}",
                method=e.method,
                path=e.path,
                requests=e.requests,
                concurrency=e.concurrency,
                errors=e.errors,
                error_rate=e.error_rate,
                p50_ms=e.p50_ms,
                p95_ms=e.p95_ms,
                p99_ms=e.p99_ms,
            )
            for e in result.endpoints
        },
        release=result.release,
        revision=result.revision,
        base_url=result.base_url,
    )


def run_line(run: Run) -> str:
    """One history line."""
    return json.dumps(
        {
            "format": RUN_FORMAT,
            "at": run.at,
            "release": run.release,
            "revision": run.revision,
            "base_url": run.base_url,
            "endpoints": {k: f.as_json() for k, f in run.endpoints.items()},
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def kept_history(lines: Sequence[str], run: Run, keep: int = HISTORY_KEEP) -> str:
    """The history file's new text: its lines plus this run, the newest `keep`."""
    kept = [line for line in lines if line.strip()][-(keep - 1) :] if keep > 1 else []
    return "\n".join([*kept, run_line(run)]) + "\n"


def baseline_from(
    runs: Sequence[Run], *, saved_at: str, machine: Mapping[str, Any]
) -> dict[str, Any]:
    """A baseline document from the newest run and the ones before it: per endpoint of the
    newest run, the median of each figure over the runs that measured it."""
    newest = runs[-1]
    endpoints: dict[str, Any] = {}
    for key, now in newest.endpoints.items():
        seen = [r.endpoints[key] for r in runs if key in r.endpoints]
        endpoints[key] = {
            **now.as_json(),
            "errors": round(statistics.median(f.errors for f in seen)),
            "error_rate": round(statistics.median(f.error_rate for f in seen), 6),
            **{q: _round(_median([getattr(f, q) for f in seen])) for q in _QUANTILES},
            "runs": len(seen),
        }
    return {
        "format": BASELINE_FORMAT,
        "saved_at": saved_at,
        "release": newest.release,
        "revision": newest.revision,
        "base_url": newest.base_url,
        "runs": len(runs),
        "machine": dict(machine),
        "endpoints": endpoints,
    }


_QUANTILES = ("p50_ms", "p95_ms", "p99_ms")


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------- parsing --


def _figures(key: str, raw: Any, where: str) -> Figures:
    if not isinstance(raw, dict):
        raise BaselineError(f"{where}: endpoints.{key} is not an object")
    try:
        return Figures(
            key=key,
            method=str(raw["method"]),
            path=str(raw["path"]),
            requests=_int(raw["requests"]),
            concurrency=_int(raw["concurrency"]),
            errors=_int(raw["errors"]),
            error_rate=_number(raw["error_rate"]),
            p50_ms=_optional(raw.get("p50_ms")),
            p95_ms=_optional(raw.get("p95_ms")),
            p99_ms=_optional(raw.get("p99_ms")),
        )
    except KeyError as exc:
        raise BaselineError(f"{where}: endpoints.{key}.{exc.args[0]} is missing") from None
    except (TypeError, ValueError):
        raise BaselineError(f"{where}: endpoints.{key} has a value that is not a number") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else _number(value)


def _endpoints(raw: Any, where: str) -> dict[str, Figures]:
    if not isinstance(raw, dict) or not raw:
        raise BaselineError(f"{where}: endpoints is missing or empty")
    for key in raw:
        if "/" not in key:
            raise BaselineError(f"{where}: endpoints.{key} is not a pack/endpoint key")
    return {key: _figures(key, value, where) for key, value in raw.items()}


def parse_baseline(text: str, source: str) -> Baseline:
    fix = (
        "Save a new one with `releasegate perf ENV --save-baseline FILE` (or restore the "
        "file from git)."
    )
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"baseline {source} is not valid JSON ({exc}). {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise BaselineError(
            f"baseline {source}: format is not {BASELINE_FORMAT!r}; it is not a perf "
            f"baseline (or one from another version). {fix}"
        )
    try:
        endpoints = _endpoints(doc.get("endpoints"), f"baseline {source}")
    except BaselineError as exc:
        raise BaselineError(f"{exc}. {fix}") from None
    saved_at = doc.get("saved_at")
    if not isinstance(saved_at, str) or not saved_at:
        raise BaselineError(f"baseline {source}: saved_at is missing. {fix}")
    machine = doc.get("machine")
    runs = doc.get("runs", 1)
    return Baseline(
        source=source,
        saved_at=saved_at,
        endpoints=endpoints,
        release=doc.get("release") if isinstance(doc.get("release"), str) else None,
        revision=doc.get("revision") if isinstance(doc.get("revision"), str) else None,
        base_url=str(doc.get("base_url") or ""),
        runs=runs if isinstance(runs, int) and not isinstance(runs, bool) else 1,
        machine=machine if isinstance(machine, dict) else {},
    )


def parse_history(text: str, source: str) -> list[Run]:
    runs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"history {source} line {number}"
        fix = "Delete the line (or the file: the history only feeds trends and streaks)."
        try:
            doc = json.loads(line)
        except ValueError:
            raise BaselineError(f"{where} is not valid JSON. {fix}") from None
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
            raise BaselineError(f"{where}: format is not {RUN_FORMAT!r}. {fix}")
        try:
            endpoints = _endpoints(doc.get("endpoints"), where)
        except BaselineError as exc:
            raise BaselineError(f"{exc}. {fix}") from None
        at = doc.get("at")
        if not isinstance(at, str) or not at:
            raise BaselineError(f"{where}: at is missing. {fix}")
        runs.append(
            Run(
                at=at,
                endpoints=endpoints,
                release=doc.get("release") if isinstance(doc.get("release"), str) else None,
                revision=doc.get("revision") if isinstance(doc.get("revision"), str) else None,
                base_url=str(doc.get("base_url") or ""),
            )
        )
    return runs


# ---------------------------------------------------------------- comparing --


def over_policy(now: Figures, base: Figures, policy: Policy) -> tuple[str, ...]:
    """Why `now` is over the policy against `base` (empty: it is not)."""
    reasons = []
    if now.p95_ms is None and base.p95_ms is not None:
        reasons.append(f"p95: no successful request (baseline {base.p95_ms:.1f} ms)")
    elif now.p95_ms is not None and base.p95_ms is not None:
        delta = now.p95_ms - base.p95_ms
        pct = delta / base.p95_ms * 100 if base.p95_ms > 0 else float("inf")
        if delta > policy.p95_increase_ms and pct > policy.p95_increase_pct:
            reasons.append(
                f"p95 {now.p95_ms:.1f} ms vs {base.p95_ms:.1f} ms: +{delta:.1f} ms (+{pct:.0f} %)"
            )
    rise = now.error_rate - base.error_rate
    if rise > policy.error_rate_increase:
        reasons.append(
            f"error rate {now.error_rate:.1%} vs {base.error_rate:.1%}: +{rise * 100:.1f} points"
        )
    return tuple(reasons)


def compare(
    run: Run, baseline: Baseline, policy: Policy, history: Sequence[Run] = ()
) -> Comparison:
    """This run against the baseline; `history` holds the runs before this one (oldest
    first). Only runs recorded since the baseline was saved count towards a streak."""
    since = [r for r in history if r.at >= baseline.saved_at]
    verdicts = []
    notes = []
    for key, now in run.endpoints.items():
        base = baseline.endpoints.get(key)
        if base is None:
            verdicts.append(
                EndpointVerdict(key=key, status="new", p95_ms=now.p95_ms, error_rate=now.error_rate)
            )
            continue
        if (now.requests, now.concurrency) != (base.requests, base.concurrency):
            notes.append(
                f"{now.endpoint}: measured with n={now.requests} c={now.concurrency}, the "
                f"baseline with n={base.requests} c={base.concurrency}; not like for like"
            )
        reasons = over_policy(now, base, policy)
        streak = 0
        if reasons:
            streak = 1
            for earlier in reversed(since):
                figures = earlier.endpoints.get(key)
                if figures is None or not over_policy(figures, base, policy):
                    break
                streak += 1
        delta = pct = None
        if now.p95_ms is not None and base.p95_ms is not None:
            delta = now.p95_ms - base.p95_ms
            pct = delta / base.p95_ms * 100 if base.p95_ms > 0 else None
        status = "ok" if not reasons else "regressed" if streak >= policy.consecutive else "over"
        verdicts.append(
            EndpointVerdict(
                key=key,
                status=status,
                p95_ms=now.p95_ms,
                baseline_p95_ms=base.p95_ms,
                p95_delta_ms=delta,
                p95_delta_pct=pct,
                error_rate=now.error_rate,
                baseline_error_rate=base.error_rate,
                streak=streak,
                reasons=reasons,
            )
        )
    missing = tuple(k for k in baseline.endpoints if k not in run.endpoints)
    return Comparison(
        baseline=baseline,
        policy=policy,
        endpoints=tuple(verdicts),
        missing=missing,
        notes=tuple(notes),
    )


def verdict_line(v: EndpointVerdict, policy: Policy) -> str:
    label = {"ok": "OK", "over": "OVER", "regressed": "REGRESSED", "new": "NEW"}[v.status]
    if v.status == "new":
        return f"{label:9} {v.endpoint}: not in the baseline (nothing to compare with)"
    if v.status == "ok":
        delta = (
            f"p95 {v.p95_ms:.1f} ms vs {v.baseline_p95_ms:.1f} ms ({v.p95_delta_ms:+.1f} ms)"
            if v.p95_ms is not None and v.baseline_p95_ms is not None and v.p95_delta_ms is not None
            else "p95 -"
        )
        return f"{label:9} {v.endpoint}: {delta}"
    count = f"{v.streak}/{policy.consecutive} consecutive runs"
    tail = "" if v.status == "regressed" else " (not yet a regression)"
    return f"{label:9} {v.endpoint}: {'; '.join(v.reasons)}; {count}{tail}"


def comparison_lines(c: Comparison) -> list[str]:
    b = c.baseline
    made = f"median of {b.runs} runs" if b.runs > 1 else "1 run"
    release = f", release {b.release}" if b.release else ""
    lines = [
        f"baseline {b.source} (saved {b.saved_at}{release}, {made}); regression: "
        f"{c.policy.describe()}",
        *(verdict_line(v, c.policy) for v in c.endpoints),
        *(f"MISSING   {k.partition('/')[2]}: in the baseline, not measured" for k in c.missing),
        *(f"note: {n}" for n in c.notes),
    ]
    if c.regressed:
        lines.append(
            f"regressed against {b.source}: "
            + ", ".join(f"{v.endpoint} ({'; '.join(v.reasons)})" for v in c.regressed)
        )
    return lines
