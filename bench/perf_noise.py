"""How noisy is `releasegate perf`? Repeat runs of one build against the sandbox VPS.

    .venv/bin/python -m bench.perf_noise --runs 12 --json /tmp/perf-noise.json

Boots a sandbox (`--sandbox NAME:INDEX`, default rgnoise:31), deploys the sample app to it
once through `deploy.operations` (as `releasegate deploy` does), then runs the sample app's
perf pack `--runs` times against it, back to back, with the pack's own settings (200 requests
at concurrency 8 per endpoint, 5 warm-up requests). It prints, per endpoint and percentile,
the median, min, max and the spread of the runs (max/median - 1, and max - median in ms), and
the machine's load: the figures docs/smoke.md ("Baselines and regressions") derives the
regression policy's defaults from. The sandbox is removed at the end.
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
from deploy import demo, operations, sandbox
from deploy.operations import Options
from deploy.report import RecordingReporter
from smoke.commands import load_packs
from smoke.perf import perf_packs, run_perf

PACK = demo.PROJECT / "examples" / "sampleapp" / "smoke.yml"


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--sandbox", default="rgnoise:31", metavar="NAME:INDEX")
    ap.add_argument("--port", type=int, default=4300)
    ap.add_argument("--json", type=Path, help="write runs and spreads here")
    args = ap.parse_args(argv)
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
