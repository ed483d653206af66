"""Click commands `smoke` and `perf`, made to be attached to the `releasegate` group:

    from smoke.cli import attach
    attach(main, resolve_env=operations.smoke_target)   # resolve_env: ENV -> ContextManager[Target]

Without a resolver only the `--base-url URL` form works. `python -m smoke.cli` runs them on
their own (no ENV form). The commands are thin: they parse arguments and call smoke.commands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from smoke.policy import Policy

if TYPE_CHECKING:
    from smoke.commands import Resolver

# smoke.commands (httpx, pydantic, jsonschema) is imported when a command runs, not when the
# CLI is built: `releasegate --help` must not pay for it (tests/unit/test_cli_startup.py).
PERF_MODES = ("informational", "blocking")  # smoke.commands.PERF_MODES

ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (every comparison with nan is false, so a range
    alone lets it through) and inf: a number of seconds or a percentage must be a number."""

    name = "float"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

SMOKE_EPILOG = """\b
Exit codes:
  0  every enforced check passed (warn-mode failures are shown, never block)
  1  an enforced check failed
  2  bad pack, arguments or inventory; nothing was contacted
  5  smoke ENV: could not reach ENV over SSH (down, refused, auth); nothing was tested
  7  smoke ENV: the host's SSH key is unknown or changed; refused
"""
PERF_EPILOG = """\b
Exit codes:
  0  no threshold breached and no regression, or --mode informational
  1  a threshold breached, or a regression against --baseline, in --mode blocking
  2  bad pack, arguments, baseline or history file; nothing was contacted
"""
TREND_EPILOG = """\b
Exit codes:
  0  the Markdown was printed
  2  the history (or baseline) file is missing or unreadable
"""
DEFAULT_POLICY = Policy()


def _split(
    ctx: click.Context, args: tuple[str, ...], base_url: str | None, resolve: Resolver | None
) -> tuple[str | None, tuple[str, ...], str | None]:
    """ENV, packs and base URL from the arguments. With --base-url every argument is a pack;
    without it the first argument is the environment, or a URL (`smoke http://… PACK`, the
    same as --base-url)."""
    if base_url is not None:
        return None, args, base_url
    if not args:
        raise click.UsageError("give an environment (ENV) or --base-url URL", ctx=ctx)
    if args[0].startswith(("http://", "https://")):
        return None, args[1:], args[0]
    if resolve is None:
        raise click.UsageError(
            "this command has no environments wired in; use --base-url URL", ctx=ctx
        )
    env, *packs = args
    if not ENV_NAME.match(env):
        raise click.UsageError(
            f"{env!r} is not an environment name (inventories/<env>.yml); to run a pack file "
            f"against a URL use --base-url URL {env}",
            ctx=ctx,
        )
    return env, tuple(packs), None


def _plain(ctx: click.Context, plain: bool) -> bool:
    """--plain here, or the root group's --plain (releasegate --plain smoke …)."""
    return plain or bool(ctx.find_root().params.get("plain"))


def _json(ctx: click.Context, json_out: bool) -> bool:
    """--json here, or the root group's --json (releasegate --json smoke …)."""
    return json_out or bool(ctx.find_root().params.get("json_out"))


Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def smoke_command(
    resolve_env: Resolver | None = None, complete_env: Completer | None = None
) -> click.Command:
    @click.command("smoke", epilog=SMOKE_EPILOG)
    @click.argument("args", nargs=-1, metavar="[ENV] [PACK]...", shell_complete=complete_env)
    @click.option("--base-url", metavar="URL", help="Run against this URL instead of ENV.")
    @click.option(
        "--junit", type=click.Path(path_type=Path, dir_okay=False), help="Write JUnit XML here."
    )
    @click.option("--json", "json_out", is_flag=True, help="One JSON object per check + summary.")
    @click.option("--concurrency", type=click.IntRange(1, 64), help="Checks run at once [4].")
    @click.option(
        "--audit/--no-audit",
        default=None,
        help="Also run the built-in readiness audit (default: the inventory's smoke.audit).",
    )
    @click.option("--plain", is_flag=True, help="Plain lines even on a terminal.")
    @click.pass_context
    def smoke(
        ctx: click.Context,
        args: tuple[str, ...],
        base_url: str | None,
        junit: Path | None,
        json_out: bool,
        concurrency: int | None,
        audit: bool | None,
        plain: bool,
    ) -> None:
        """Run contract smoke packs against ENV (its tunnel or base_url) or a URL (--base-url URL,
        or a URL in place of ENV).

        PACK is a pack file or a built-in pack name; with ENV and no PACK, the inventory's
        smoke.packs run.
        """
        from smoke import commands
        from smoke.config import AuditSettings

        env, packs, base_url = _split(ctx, args, base_url, resolve_env)
        if env is not None:
            assert resolve_env is not None
            code = commands.run_smoke_env(
                env,
                resolve_env,
                packs=packs,
                audit=audit,
                junit=junit,
                json_out=_json(ctx, json_out),
                concurrency=concurrency,
                plain=_plain(ctx, plain),
            )
        else:
            assert base_url is not None
            code = commands.run_smoke(
                base_url=base_url,
                packs=packs,
                junit=junit,
                json_out=_json(ctx, json_out),
                concurrency=concurrency or 4,
                audit=AuditSettings(enabled=True) if audit else None,
                plain=_plain(ctx, plain),
            )
        ctx.exit(code)

    return smoke


def perf_command(
    resolve_env: Resolver | None = None, complete_env: Completer | None = None
) -> click.Command:
    @click.command("perf", epilog=PERF_EPILOG)
    @click.argument("args", nargs=-1, metavar="[ENV] [PACK]...", shell_complete=complete_env)
    @click.option("--base-url", metavar="URL", help="Measure this URL instead of ENV.")
    @click.option(
        "--mode",
        type=click.Choice(PERF_MODES),
        help="informational (report, exit 0) or blocking (exit 1 on a breach) "
        "[inventory smoke.perf.mode, else informational]",
    )
    @click.option("--json", "json_out", is_flag=True, help="One JSON object per endpoint.")
    @click.option("--requests", "-n", type=click.IntRange(1, 100_000), help="Per endpoint.")
    @click.option("--concurrency", "-c", type=click.IntRange(1, 256), help="Requests at once.")
    @click.option("--plain", is_flag=True, help="Plain lines even on a terminal.")
    @click.option(
        "--baseline",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Compare with this baseline file (docs/smoke.md, 'Baselines and regressions').",
    )
    @click.option(
        "--save-baseline",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Save this run (or the median of --baseline-runs runs) as a baseline here.",
    )
    @click.option(
        "--history",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Append the run to this JSON-lines history [beside the baseline: NAME.history.jsonl].",
    )
    @click.option(
        "--baseline-runs",
        type=click.IntRange(1, 30),
        default=1,
        show_default=True,
        help="--save-baseline: the median of this run and the ones before it in the history.",
    )
    @click.option(
        "--consecutive",
        type=click.IntRange(1, 30),
        default=DEFAULT_POLICY.consecutive,
        show_default=True,
        help="Runs in a row over the policy before it is a regression.",
    )
    @click.option(
        "--p95-increase-pct",
        type=FiniteFloatRange(0),
        default=DEFAULT_POLICY.p95_increase_pct,
        show_default=True,
        help="p95 must be worse than the baseline by more than this percentage …",
    )
    @click.option(
        "--p95-increase-ms",
        type=FiniteFloatRange(0),
        default=DEFAULT_POLICY.p95_increase_ms,
        show_default=True,
        help="… and by more than this many milliseconds.",
    )
    @click.option(
        "--error-rate-increase",
        type=FiniteFloatRange(0, 1),
        default=DEFAULT_POLICY.error_rate_increase,
        show_default=True,
        help="Or the error rate above the baseline's by more than this (0.01 = 1 point).",
    )
    @click.pass_context
    def perf(
        ctx: click.Context,
        args: tuple[str, ...],
        base_url: str | None,
        mode: str | None,
        json_out: bool,
        requests: int | None,
        concurrency: int | None,
        plain: bool,
        baseline: Path | None,
        save_baseline: Path | None,
        history: Path | None,
        baseline_runs: int,
        consecutive: int,
        p95_increase_pct: float,
        p95_increase_ms: float,
        error_rate_increase: float,
    ) -> None:
        """Measure the hot endpoints named in the packs' perf: sections: N requests at
        concurrency C, p50/p95/p99 and error rate against the thresholds and, with
        --baseline, against a saved run under the regression policy."""
        from smoke import commands
        from smoke.commands import BaselineOptions

        keep = BaselineOptions(
            compare=baseline,
            save=save_baseline,
            history=history,
            save_runs=baseline_runs,
            policy=Policy(
                p95_increase_pct=p95_increase_pct,
                p95_increase_ms=p95_increase_ms,
                error_rate_increase=error_rate_increase,
                consecutive=consecutive,
            ),
        )
        env, packs, base_url = _split(ctx, args, base_url, resolve_env)
        if env is not None:
            assert resolve_env is not None
            code = commands.run_perf_env(
                env,
                resolve_env,
                packs=packs,
                mode=mode,
                json_out=_json(ctx, json_out),
                requests=requests,
                concurrency=concurrency,
                plain=_plain(ctx, plain),
                baseline=keep,
            )
        else:
            assert base_url is not None
            code = commands.run_perf(
                base_url=base_url,
                packs=packs,
                mode=mode or "informational",
                json_out=_json(ctx, json_out),
                requests=requests,
                concurrency=concurrency,
                plain=_plain(ctx, plain),
                baseline=keep,
            )
        ctx.exit(code)

    return perf


def perf_trend_command() -> click.Command:
    @click.command("perf-trend", epilog=TREND_EPILOG)
    @click.argument("history", type=click.Path(path_type=Path, dir_okay=False))
    @click.option(
        "--baseline",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Draw this baseline's p95 as a second line.",
    )
    @click.pass_context
    def perf_trend(ctx: click.Context, history: Path, baseline: Path | None) -> None:
        """Markdown with a Mermaid chart of p95 per endpoint over the runs kept in HISTORY
        (written by `perf --history`); append it to $GITHUB_STEP_SUMMARY to see it."""
        from smoke import commands

        ctx.exit(commands.run_perf_trend(history, baseline=baseline, json_out=_json(ctx, False)))

    return perf_trend


def attach(
    group: click.Group, resolve_env: Resolver | None = None, complete_env: Completer | None = None
) -> None:
    """Add `smoke`, `perf` and `perf-trend` to a Click group (the `releasegate` console
    script); `complete_env` completes ENV in the shell."""
    group.add_command(smoke_command(resolve_env, complete_env))
    group.add_command(perf_command(resolve_env, complete_env))
    group.add_command(perf_trend_command())


@click.group()
def main() -> None:
    """Contract smoke packs and perf thresholds against any URL (--base-url)."""


attach(main)

if __name__ == "__main__":
    main()
