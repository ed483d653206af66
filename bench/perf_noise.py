"""How noisy is `releasegate perf`? Repeat runs of one build against the sandbox VPS.

    .venv/bin/python -m bench.perf_noise --runs 12 --json /tmp/perf-noise.json

Boots a sandbox (`--sandbox NAME:INDEX`, default rgnoise:31), deploys the sample app to it
once through `deploy.operations` (as `releasegate deploy` does), then runs the sample app's
perf pack `--runs` times against it, back to back, with the pack's own settings (200 requests
at concurrency 8 per endpoint, 5 warm-up requests). It prints, per endpoint and percentile,
the median, min, max and the spread of the runs (max/median - 1, and max - median in ms), and
the machine's load: the figures docs/smoke.md ("Baselines and regressions") derives the
regression policy's defaults from. The sandbox is removed at the end.

Then it replays the runs through the real comparison (smoke.baseline): a baseline from the
median of 5 consecutive runs, every later window of N runs compared with it, for a few
policies — the share of windows that would have been a regression although nothing changed
(false alarms), and, with a slowdown added to the runs, the share that catches it.
`--from-json FILE` replays an earlier run's file without booting anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.rig import load_average, machine
from deploy import demo, operations, reference, sandbox
from deploy.operations import Options
from deploy.report import RecordingReporter
from smoke.baseline import Figures, Policy, Run, baseline_from, compare, parse_baseline
from smoke.commands import load_packs
from smoke.perf import perf_packs, run_perf

PACK = reference.sample_app() / "smoke.yml"


def deploy_sample_app(info: sandbox.SandboxInfo, into: Path, port: int) -> str:
    repo = demo.make_app_repo(into)
    tag = uuid.uuid4().hex[:6]
    data = {
        "hosts": [
            {
                "name": "sandbox",
                "address": info.address,
                "user": info.user,
                "root": f"/srv/noise-{tag}",
                "identity_file": str(info.identity_file),
            }
        ],
        "ssh": {"known_hosts": str(info.known_hosts)},
        "app": {
            "name": f"noise-{tag}",
            "repo": str(repo),
            "install": "npm ci --omit=dev --offline --no-audit --no-fund",
        },
        "process": {
            "command": "server.js",
            "port": port,
            "instances": 2,
            "env": {"HOST": "0.0.0.0"},
        },
        "health": {"deadline": 20, "interval": 0.3, "successes": 3, "stable_for": 1},
    }
    inv_dir = into / "inventories"
    inv_dir.mkdir(parents=True)
    (inv_dir / "noise.yml").write_text(yaml.safe_dump(data))
    rep = RecordingReporter()
    code = operations.run_deploy("noise", Options(inventories=inv_dir), reporter=rep)
    if code != 0:
        raise SystemExit(f"deploy failed with exit {code}: {rep.lines[-8:]}")
    return f"http://{info.address}:{port}"


def spread(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {
        "median": round(med, 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "max_over_median_pct": round((max(values) / med - 1) * 100, 1) if med else 0.0,
        "max_minus_median_ms": round(max(values) - med, 2),
    }


POLICIES = (
    Policy(p95_increase_pct=25, p95_increase_ms=5, consecutive=1),
    Policy(p95_increase_pct=50, p95_increase_ms=10, consecutive=1),
    Policy(p95_increase_pct=50, p95_increase_ms=10, consecutive=2),
    Policy(p95_increase_pct=50, p95_increase_ms=10, consecutive=3),
    Policy(p95_increase_pct=75, p95_increase_ms=10, consecutive=3),
)
BASELINE_RUNS = 5


def as_run(i: int, figures: dict[str, dict[str, float]], slower_ms: float = 0.0) -> Run:
    return Run(
        at=f"2026-01-01T00:{i:02d}:00+00:00",
        endpoints={
            f"sampleapp/{name}": Figures(
                key=f"sampleapp/{name}",
                method="GET",
                path="/",
                requests=int(f["requests"]),
                concurrency=8,
                errors=int(f["errors"]),
                error_rate=f["errors"] / f["requests"],
                p50_ms=f["p50"] + slower_ms,
                p95_ms=f["p95"] + slower_ms,
                p99_ms=f["p99"] + slower_ms,
            )
            for name, f in figures.items()
        },
    )


def replay(runs: list[dict[str, Any]], policy: Policy, slower_ms: float = 0.0) -> tuple[int, int]:
    """(windows that regressed, windows) for baselines from every 5 consecutive runs."""
    hits = total = 0
    n = policy.consecutive
    for start in range(len(runs) - BASELINE_RUNS - n + 1):
        made = [as_run(start + k, runs[start + k]) for k in range(BASELINE_RUNS)]
        doc = baseline_from(made, saved_at="2026-01-01T00:00:00+00:00", machine={})
        base = parse_baseline(json.dumps(doc), "replay")
        for end in range(start + BASELINE_RUNS + n - 1, len(runs)):
            window = [as_run(k, runs[k], slower_ms) for k in range(end - n + 1, end + 1)]
            for endpoint in runs[0]:
                total += 1
                verdict = compare(window[-1], base, policy, window[:-1]).of(f"sampleapp/{endpoint}")
                hits += bool(verdict and verdict.status == "regressed")
    return hits, total


def policy_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| policy | false alarms | +30 ms caught | +100 ms caught |", "|---|---|---|---|"]
    for policy in POLICIES:
        cells = []
        for slower in (0.0, 30.0, 100.0):
            hits, total = replay(runs, policy, slower)
            cells.append(f"{hits}/{total} ({hits / total:.0%})" if total else "-")
        lines.append(
            f"| +{policy.p95_increase_pct:g} % and +{policy.p95_increase_ms:g} ms, "
            f"{policy.consecutive} run(s) | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--sandbox", default="rgnoise:31", metavar="NAME:INDEX")
    ap.add_argument("--port", type=int, default=4300)
    ap.add_argument("--json", type=Path, help="write runs and spreads here")
    ap.add_argument("--from-json", type=Path, help="replay the runs of an earlier --json file")
    args = ap.parse_args(argv)
    if args.from_json:
        print("\n".join(policy_table(json.loads(args.from_json.read_text())["runs"])))
        return 0
    name, _, index = args.sandbox.partition(":")
    with tempfile.TemporaryDirectory(prefix="perf-noise-") as tmp:
        spec = sandbox.SandboxSpec(name=name, index=int(index), state_root=Path(tmp) / "state")
        info = sandbox.up(spec)
        try:
            base = deploy_sample_app(info, Path(tmp), args.port)
            packs = perf_packs(load_packs([PACK]))
            runs: list[dict[str, Any]] = []
            loads = [load_average()]
            for i in range(args.runs):
                result = run_perf(packs, base_url=base)
                runs.append(
                    {
                        e.endpoint: {
                            "p50": e.p50_ms,
                            "p95": e.p95_ms,
                            "p99": e.p99_ms,
                            "errors": e.errors,
                            "requests": e.requests,
                        }
                        for e in result.endpoints
                    }
                )
                print(
                    f"run {i + 1}: "
                    + "  ".join(
                        f"{k} p50 {v['p50']:.1f} p95 {v['p95']:.1f} p99 {v['p99']:.1f} "
                        f"err {v['errors']}"
                        for k, v in runs[-1].items()
                    ),
                    flush=True,
                )
            loads.append(load_average())
        finally:
            sandbox.down(spec)
    spreads = {
        endpoint: {q: spread([r[endpoint][q] for r in runs]) for q in ("p50", "p95", "p99")}
        for endpoint in runs[0]
    }
    print(json.dumps({"spreads": spreads, "load": loads}, indent=2))
    print("\n".join(policy_table(runs)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "spreads": spreads,
                    "load": loads,
                    "machine": machine(),
                    "settings": {"pack": str(PACK), "runs": args.runs},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
