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

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from smoke import report
from smoke.audit import audit_pack
from smoke.clock import Clock
from smoke.config import AuditSettings, PerfSettings, SmokeSettings
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
    settings: SmokeSettings, *, base_dir: Path, base_url: str, secrets: Iterable[str] = ()
) -> Target:
    """A Target for a Resolver to yield, from the inventory's smoke: section."""
    return Target(
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
) -> int:
    """Run packs (and the audit, when `audit.enabled`) against base_url; print the results
    (Rich table on a TTY, plain lines, or JSON lines), write JUnit XML if asked."""
    out = out or sys.stdout
    err = err or sys.stderr
    secrets = tuple(extra_secrets)
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
        report.error(str(exc), err, secrets)
        return 2
    result = run_packs(
        loaded,
        base_url=base,
        client=client,
        concurrency=concurrency,
        clock=clock,
        extra_secrets=secrets,
    )
    report.smoke_result(result, out, report.choose_style(out, json_out=json_out, plain=plain))
    if junit is not None:
        try:
            report.write_junit(result, junit)
        except OSError as exc:
            report.error(f"could not write the JUnit report {junit}: {exc}", err, secrets)
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
) -> int:
    """Measure the hot endpoints of the packs' perf: sections; print p50/p95/p99 and error
    rate against the thresholds. informational: exit 0; blocking: exit 1 on a breach."""
    out = out or sys.stdout
    err = err or sys.stderr
    secrets = tuple(extra_secrets)
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
    except (PackError, BaseUrlError, ArgumentError) as exc:
        report.error(str(exc), err, secrets)
        return 2
    result = measure(
        loaded,
        base_url=base,
        client=client,
        requests=requests,
        concurrency=concurrency,
        extra_secrets=secrets,
    )
    report.perf_result(result, mode, out, report.choose_style(out, json_out=json_out, plain=plain))
    return result.exit_code(mode)


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
            )
    except TargetUnavailable as exc:
        report.error(exc.message, err)
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
) -> int:
    err = err or sys.stderr
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
            )
    except TargetUnavailable as exc:
        report.error(exc.message, err)
        return exc.exit_code
