"""The functions behind `releasegate smoke`, `releasegate perf` and the Invoke tasks, and the
helpers the deploy gate uses. Each `run_*` returns an exit code:

    0  every enforced check passed (perf: no breach, or informational mode)
    1  an enforced check failed (perf: a threshold breached in blocking mode)
    2  bad pack, bad arguments or settings; nothing was contacted

Environments are resolved by the caller (smoke/ knows nothing of inventories or SSH): it
passes a `Resolver` that turns ENV into a `Target` (base URL — a tunnel or the inventory's
base_url — plus the inventory's smoke settings), open for as long as the run needs it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx

from smoke import baseline as baselines
from smoke import report, trend
from smoke.audit import audit_pack
from smoke.baseline import Baseline, BaselineError, Policy
from smoke.clock import Clock
from smoke.config import AuditSettings, PerfSettings, SmokeSettings
from smoke.jsonlines import JsonLines
from smoke.model import Pack, PackResult
from smoke.pack import PackError, load_pack, resolve_ref
from smoke.perf import perf_packs
from smoke.perf import run_perf as measure
from smoke.runner import BaseUrlError, check_base_url, run_packs

PERF_MODES = ("informational", "blocking")


@dataclass(frozen=True)
class Target:
    """What an environment resolves to for `smoke ENV` and `perf ENV`."""

    base_url: str
    packs: tuple[Path, ...] = ()  # the inventory's packs, already absolute
    audit: AuditSettings | None = None
    concurrency: int = 4
    perf: PerfSettings = field(default_factory=PerfSettings)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # e.g. a health token, to mask
    label: str = ""  # how output names it (the environment), instead of base_url


class TargetUnavailable(Exception):
    """Raised by a Resolver that cannot reach the environment (bad inventory, SSH refused …).
    Its message is shown as the error and its exit_code is the command's."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


Resolver = Callable[[str], AbstractContextManager[Target]]


class ArgumentError(ValueError):
    """An option value that cannot work; exit 2 before anything is contacted."""


# ------------------------------------------------------------------ for the gate --


def pack_paths(settings: SmokeSettings, base_dir: Path) -> tuple[Path, ...]:
    """The inventory's `smoke.packs` as files (relative to base_dir, or built-in names)."""
    return tuple(resolve_ref(ref, base_dir) for ref in settings.packs)


def load_packs(
    paths: Iterable[Path | str],
    *,
    audit: AuditSettings | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Pack]:
    """Load packs (paths or built-in names) and, when `audit.enabled`, the audit pack.
    Raises PackError. Call it before contacting anything: a bad pack is exit 2."""
    env = os.environ if environ is None else environ
    where = base_dir or Path.cwd()
    packs = [load_pack(resolve_ref(str(p), where), environ=env) for p in paths]
    if audit is not None and audit.enabled:
        packs.append(audit_pack(audit, environ=env))
    names = [p.name for p in packs]
    for name in names:
        if names.count(name) > 1:
            raise PackError(
                f"two packs are named {name!r}; give each pack its own name: (results and "
                f"JUnit suites are keyed by it)"
            )
    return packs


def packs_from_settings(
    settings: SmokeSettings, *, base_dir: Path, environ: Mapping[str, str] | None = None
) -> list[Pack]:
    """Everything the deploy gate runs for an inventory: its packs, then the audit pack."""
    return load_packs(
        pack_paths(settings, base_dir), audit=settings.audit, base_dir=base_dir, environ=environ
    )


def target_from_settings(
    settings: SmokeSettings,
    *,
    base_dir: Path,
    base_url: str,
    secrets: Iterable[str] = (),
    label: str = "",
) -> Target:
    """A Target for a Resolver to yield, from the inventory's smoke: section."""
    return Target(
        label=label,
        base_url=base_url,
        packs=pack_paths(settings, base_dir),
        audit=settings.audit if settings.audit.enabled else None,
        concurrency=settings.concurrency,
        perf=settings.perf,
        secrets=tuple(secrets),
    )


# ------------------------------------------------------------------ smoke --


def run_smoke(
    *,
    base_url: str,
    packs: Sequence[Path | str] = (),
    junit: Path | None = None,
    json_out: bool = False,
    concurrency: int = 4,
    audit: AuditSettings | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    plain: bool = False,
    client: httpx.Client | None = None,
    clock: Clock | None = None,
    environ: Mapping[str, str] | None = None,
    extra_secrets: Iterable[str] = (),
    base_dir: Path | None = None,
    lines: JsonLines | None = None,
    label: str = "",
) -> int:
    """Run packs (and the audit, when `audit.enabled`) against base_url; print the results
    (Rich table on a TTY, plain lines, or JSON lines), write JUnit XML if asked."""
    out = out or sys.stdout
    err = err or sys.stderr
    secrets = tuple(extra_secrets)
    if json_out and lines is None:
        lines = JsonLines(out)
    try:
        base = check_base_url(base_url)
        _check_junit(junit)
        if concurrency < 1:
            raise ArgumentError("--concurrency must be at least 1")
        loaded = load_packs(packs, audit=audit, base_dir=base_dir, environ=environ)
        if not loaded:
            raise PackError(
                "nothing to run: name a pack file (or a built-in pack such as health), or "
                "enable the readiness audit (--audit, or smoke.audit.enabled in the inventory)"
            )
    except (PackError, BaseUrlError, ArgumentError) as exc:
        report.error(str(exc), err, secrets, lines=lines)
        return 2
    result = run_packs(
        loaded,
        base_url=base,
        client=client,
        concurrency=concurrency,
        clock=clock,
        extra_secrets=secrets,
    )
    if label:
        result = replace(result, label=label)
    junit_failed = None
    if junit is not None:
        try:
            report.write_junit(result, junit)
        except OSError as exc:
            junit_failed = f"could not write the JUnit report {junit}: {exc}"
    style = report.choose_style(out, json_out=json_out, plain=plain)
    if style == "json" and lines is not None:
        report.write_smoke_json(result, lines, defer_outcome=junit_failed is not None)
    else:
        report.smoke_result(result, out, style)
    if junit_failed is not None:
        report.error(junit_failed, err, result.secret_values, lines=lines)
        return 2
    _under_actions(result, err, os.environ if environ is None else environ)
    return result.exit_code


def _under_actions(result: PackResult, err: IO[str], environ: Mapping[str, str]) -> None:
    """Under GitHub Actions: `::error` annotations for failed checks and a step summary.
    A summary that cannot be written is reported; it never changes the exit code."""
    if environ.get("GITHUB_ACTIONS") != "true":
        return
    summary = environ.get("GITHUB_STEP_SUMMARY") or None
    try:
        report.actions_smoke(result, err, Path(summary) if summary else None)
    except OSError as exc:
        report.error(
            f"could not append to the step summary {summary}: {exc}", err, result.secret_values
        )


def _check_junit(junit: Path | None) -> None:
    if junit is not None and not junit.parent.is_dir():
        raise ArgumentError(
            f"--junit {junit}: the directory {junit.parent} does not exist; create it first"
        )


# ------------------------------------------------------------------ perf --


@dataclass(frozen=True)
class BaselineOptions:
    """What `perf` does with baselines: compare with `compare`, save this run to `save`
    (the median of the last `save_runs` runs of the history), keep the history in `history`
    (default: beside the baseline, `<name>.history.jsonl`)."""

    compare: Path | None = None
    save: Path | None = None
    history: Path | None = None
    save_runs: int = 1
    policy: Policy = field(default_factory=Policy)

    @property
    def active(self) -> bool:
        return bool(self.compare or self.save or self.history)

    def history_path(self) -> Path | None:
        if self.history is not None:
            return self.history
        anchor = self.compare or self.save
        return None if anchor is None else anchor.with_name(f"{anchor.stem}.history.jsonl")


def perf_machine() -> dict[str, object]:
    """Where a baseline was measured from (the figures depend on it)."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": load,
    }


def _read_baseline(opts: BaselineOptions) -> tuple[Baseline | None, list[baselines.Run]]:
    """The baseline to compare with and the history, read before anything is contacted."""
    if opts.policy.consecutive < 1:
        raise ArgumentError("--consecutive must be at least 1")
    if opts.save_runs < 1:
        raise ArgumentError("--baseline-runs must be at least 1")
    base = None
    if opts.compare is not None:
        try:
            text = opts.compare.read_text(encoding="utf-8")
        except OSError as exc:
            raise BaselineError(
                f"cannot read the baseline {opts.compare}: {exc.strerror or exc}. Save one "
                f"with `releasegate perf ENV --save-baseline {opts.compare}` and commit it."
            ) from None
        base = baselines.parse_baseline(text, str(opts.compare))
    history: list[baselines.Run] = []
    path = opts.history_path()
    if path is not None and path.exists():
        try:
            history = baselines.parse_history(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise BaselineError(f"cannot read the perf history {path}: {exc}") from None
    for target in (opts.save, path):
        if target is not None and not target.parent.is_dir():
            raise ArgumentError(f"{target}: the directory {target.parent} does not exist")
    return base, history


def _replace(path: Path, text: str) -> None:
    """Write beside, then rename: an interrupted run never leaves half a baseline."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _keep_baseline(
    opts: BaselineOptions,
    run: baselines.Run,
    history: list[baselines.Run],
    *,
    machine: Mapping[str, object],
) -> list[str]:
    """Append the run to the history and save the baseline when asked; the lines to show."""
    said = []
    path = opts.history_path()
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        _replace(path, baselines.kept_history(lines, run))
        said.append(f"history: {path} ({min(len(history) + 1, baselines.HISTORY_KEEP)} runs)")
    if opts.save is not None:
        runs = [*history, run][-opts.save_runs :]
        doc = baselines.baseline_from(runs, saved_at=run.at, machine=machine)
        _replace(opts.save, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        said.append(
            f"saved the baseline {opts.save} from "
            + (f"the median of the last {len(runs)} runs" if len(runs) > 1 else "this run")
        )
    return said


def run_perf(
    *,
    base_url: str,
    packs: Sequence[Path | str] = (),
    mode: str = "informational",
    json_out: bool = False,
    requests: int | None = None,
    concurrency: int | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    plain: bool = False,
    client: httpx.Client | None = None,
    environ: Mapping[str, str] | None = None,
    extra_secrets: Iterable[str] = (),
    base_dir: Path | None = None,
    baseline: BaselineOptions | None = None,
    now: Callable[[], datetime] | None = None,
    timer: Callable[[], float] | None = None,
    lines: JsonLines | None = None,
) -> int:
    """Measure the hot endpoints of the packs' perf: sections; print p50/p95/p99 and error
    rate against the thresholds and, with a baseline, the regressions. informational: exit 0;
    blocking: exit 1 on a breach or a confirmed regression."""
    out = out or sys.stdout
    err = err or sys.stderr
    secrets = tuple(extra_secrets)
    keep = baseline or BaselineOptions()
    if json_out and lines is None:
        lines = JsonLines(out)
    try:
        base = check_base_url(base_url)
        if mode not in PERF_MODES:
            raise ArgumentError(f"--mode {mode!r}: use informational or blocking")
        for label, value in (("--requests", requests), ("--concurrency", concurrency)):
            if value is not None and value < 1:
                raise ArgumentError(f"{label} must be at least 1")
        loaded = perf_packs(load_packs(packs, base_dir=base_dir, environ=environ))
        if not loaded:
            raise PackError(
                "nothing to measure: none of the packs has a perf: section naming its hot "
                "endpoints (see docs/smoke.md, 'Perf thresholds')"
            )
        reference, history = _read_baseline(keep)
    except (PackError, BaseUrlError, ArgumentError, BaselineError) as exc:
        report.error(str(exc), err, secrets, lines=lines, op="perf")
        return 2
    result = measure(
        loaded,
        base_url=base,
        client=client,
        requests=requests,
        concurrency=concurrency,
        extra_secrets=secrets,
        timer=timer or time.perf_counter,
    )
    at = (now or (lambda: datetime.now(UTC)))().isoformat(timespec="seconds")
    run = baselines.run_of(result, at)
    comparison = (
        baselines.compare(run, reference, keep.policy, history) if reference is not None else None
    )
    kept: list[str] = []
    if keep.active:
        try:
            kept = _keep_baseline(keep, run, history, machine=perf_machine())
        except OSError as exc:
            report.error(
                f"could not write the perf baseline or history: {exc}",
                err,
                secrets,
                lines=lines,
                op="perf",
            )
            return 2
    code = baselines.exit_code(result, comparison, mode)
    style = report.choose_style(out, json_out=json_out, plain=plain)
    report.perf_result(
        result, mode, out, style, comparison=comparison, kept=kept, code=code, lines=lines
    )
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        summary = env.get("GITHUB_STEP_SUMMARY") or None
        try:
            report.actions_perf(
                result, mode, comparison, err, Path(summary) if summary else None, code=code
            )
        except OSError as exc:
            report.error(f"could not append to the step summary {summary}: {exc}", err, secrets)
    return code


def run_perf_trend(
    history: Path,
    *,
    baseline: Path | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    json_out: bool = False,
) -> int:
    """`perf-trend HISTORY`: Markdown with a Mermaid chart of p95 per endpoint over the kept
    runs (GitHub renders it in a step summary, an issue or a PR comment). With --json, the
    Markdown is the outcome's `markdown`."""
    out = out or sys.stdout
    err = err or sys.stderr
    lines = JsonLines(out) if json_out else None
    try:
        try:
            runs = baselines.parse_history(history.read_text(encoding="utf-8"), str(history))
        except OSError as exc:
            raise BaselineError(
                f"cannot read the perf history {history}: {exc.strerror or exc}; `releasegate "
                f"perf ENV --history {history}` writes it"
            ) from None
        reference = None
        if baseline is not None:
            reference, _ = _read_baseline(BaselineOptions(compare=baseline))
    except (BaselineError, ArgumentError) as exc:
        report.error(str(exc), err, lines=lines, op="perf-trend")
        return 2
    markdown = trend.markdown(runs, reference)
    if lines is not None:
        lines.outcome(
            op="perf-trend",
            result="ok",
            exit_code=0,
            message=f"p95 over {len(runs)} run(s) of {history}",
            markdown=markdown,
        )
        return 0
    print(markdown, file=out, end="", flush=True)
    return 0


# ------------------------------------------------------------------ ENV forms --


def run_smoke_env(
    env: str,
    resolve: Resolver,
    *,
    packs: Sequence[Path | str] = (),
    audit: bool | None = None,
    junit: Path | None = None,
    json_out: bool = False,
    concurrency: int | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    plain: bool = False,
) -> int:
    """`smoke ENV [PACK…]`: packs given here replace the inventory's; `audit` True/False
    overrides the inventory's smoke.audit.enabled."""
    err = err or sys.stderr
    lines = JsonLines(out or sys.stdout) if json_out else None
    try:
        load_packs(packs)  # a bad pack is exit 2 before the environment is contacted
    except PackError as exc:
        report.error(str(exc), err, lines=lines)
        return 2
    try:
        with resolve(env) as target:
            settings = target.audit or AuditSettings()
            use_audit = (target.audit is not None) if audit is None else audit
            return run_smoke(
                base_url=target.base_url,
                packs=list(packs) or list(target.packs),
                junit=junit,
                json_out=json_out,
                concurrency=concurrency or target.concurrency,
                audit=settings.model_copy(update={"enabled": True}) if use_audit else None,
                out=out,
                err=err,
                plain=plain,
                extra_secrets=target.secrets,
                lines=lines,
                label=target.label,
            )
    except TargetUnavailable as exc:
        report.error(exc.message, err, lines=lines, exit_code=exc.exit_code)
        return exc.exit_code


def run_perf_env(
    env: str,
    resolve: Resolver,
    *,
    packs: Sequence[Path | str] = (),
    mode: str | None = None,
    json_out: bool = False,
    requests: int | None = None,
    concurrency: int | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    plain: bool = False,
    baseline: BaselineOptions | None = None,
) -> int:
    err = err or sys.stderr
    lines = JsonLines(out or sys.stdout) if json_out else None
    try:
        _read_baseline(baseline or BaselineOptions())  # a bad file is said before connecting
        load_packs(packs)  # and so is a bad pack
    except (BaselineError, ArgumentError, PackError) as exc:
        report.error(str(exc), err, lines=lines, op="perf")
        return 2
    try:
        with resolve(env) as target:
            return run_perf(
                base_url=target.base_url,
                packs=list(packs) or list(target.packs),
                mode=mode or target.perf.mode,
                json_out=json_out,
                requests=requests or target.perf.requests,
                concurrency=concurrency or target.perf.concurrency,
                out=out,
                err=err,
                plain=plain,
                extra_secrets=target.secrets,
                baseline=baseline,
                lines=lines,
            )
    except TargetUnavailable as exc:
        report.error(exc.message, err, lines=lines, op="perf", exit_code=exc.exit_code)
        return exc.exit_code
