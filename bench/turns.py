"""Where a warm deploy's request→reply turns go (issue 14): python -m bench.turns.

Boots a sandbox VPS, deploys the sample app, then times warm redeploys twice — straight to the
sandbox's sshd and through the delay proxy (25 ms each way) — and counts, for the proxied one,
the turns on the wire per stage of the flow (the proxy reports when each turn began; the
reporter when each stage began and ended), the remote commands (exec sessions) and the
readiness probes. The penalty is the proxied time minus the direct one.

    python -m bench.turns --sandbox rgh14:27 --iterations 3
    python -m bench.turns --profile bench --strategy blue-green

Profiles: `peer` is the peer harness's gate (../shared/bench-peers: deadline 10 s, interval
0.25 s, 3 successes, the default stability window, no smoke pack); `nowindow` the same with
`stable_for: 0`; `bench` is bench/run.py's (deadline 5 s, stable_for 2 s, the sample app's
smoke pack).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.rig import App, DelayProxy, Kind, Rig, Run, known_hosts_for
from deploy import sandbox

PROFILES: dict[str, dict[str, Any]] = {
    "peer": {"deadline": 10.0, "interval": 0.25, "successes": 3},
    # the peer harness's gate without the stability window (as when issue 14 was measured)
    "nowindow": {"deadline": 10.0, "interval": 0.25, "successes": 3, "stable_for": 0},
    "bench": {
        "deadline": 5.0,
        "interval": 0.25,
        "successes": 3,
        "probe_timeout": 2.0,
        "stable_for": 2.0,
    },
}


def _strip_smoke(app: App, env: str) -> None:
    path = app.inventories / f"{env}.yml"
    data = yaml.safe_load(path.read_text())
    data.pop("smoke", None)
    path.write_text(yaml.safe_dump(data))


def _stage_of(run: Run, at: float) -> str:
    owner = "(outside any stage)"
    for span in run.rep.spans:
        if span.start <= at <= (span.end or run.end):
            owner = " ".join("<id>" if _idlike(w) else w for w in span.name.split())
    return owner


def _idlike(word: str) -> bool:
    return len(word) >= 15 and word[:8].isdigit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sandbox", default="rgh14:27", help="NAME:INDEX of the sandbox VPS")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="peer")
    ap.add_argument("--strategy", choices=("in-place", "blue-green"), default="in-place")
    ap.add_argument("--verbose", action="store_true", help="every turn and command, timed")
    args = ap.parse_args(argv)
    name, _, index = args.sandbox.partition(":")
    spec = sandbox.SandboxSpec(name=name, index=int(index or 0))
    with tempfile.TemporaryDirectory(prefix="rg-turns-") as work:
        rig = Rig(spec, Path(work), PROFILES[args.profile], log=lambda t: None)
        rig.up()
        try:
            kind = Kind(strategy=args.strategy, bake_s=1.0)
            app = rig.app("tturns" if args.strategy == "in-place" else "tturnsbg", kind)
            if args.profile != "bench":
                _strip_smoke(app, "bench")
            for what in ("first", "warm-up"):
                app.commit()
                run = app.deploy()
                if run.code != 0:
                    print(f"{what} deploy failed: {run.rep.lines[-15:]}", file=sys.stderr)
                    return 1
            vps = rig.vps
            direct: list[float] = []
            stages: dict[str, list[float]] = {}
            proxied: list[float] = []
            turns: list[int] = []
            commands: list[int] = []
            probes: list[int] = []
            per_stage: Counter[str] = Counter()
            with DelayProxy((vps.address, vps.port), args.delay_ms, turn_events=True) as proxy:
                pins = known_hosts_for(vps, f"[127.0.0.1]:{proxy.port}", app.dir / "kh_wan")
                app.inventory("wan", address="127.0.0.1", port=proxy.port, known_hosts=pins)
                if args.profile != "bench":
                    _strip_smoke(app, "wan")
                for i in range(args.iterations):
                    app.commit()
                    run = app.deploy()
                    assert run.code == 0, run.rep.lines[-15:]
                    direct.append(run.seconds)
                    for name, seconds in run.stage_seconds().items():
                        stages.setdefault(name, []).append(seconds)
                    app.commit()
                    run = app.deploy("wan")
                    assert run.code == 0, run.rep.lines[-15:]
                    proxied.append(run.seconds)
                    conns = {
                        e["conn"] for e in proxy.events("accept") if run.start <= e["t"] <= run.end
                    }
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        closed = [e for e in proxy.events("close") if e["conn"] in conns]
                        if len(closed) == len(conns):
                            break
                        time.sleep(0.05)
                    turns.append(sum(int(e["turns"]) for e in closed))
                    commands.append(run.commands)
                    probes.append(run.probes)
                    if i == args.iterations - 1:
                        marks = (
                            [(at, f"cmd {d[:60]}") for at, d in run.rep.sent]
                            + [
                                (float(e["t"]), "turn")
                                for e in proxy.events("turn")
                                if e["conn"] in conns
                            ]
                            + [(sp.start, f"stage {sp.name[:40]}") for sp in run.rep.spans]
                        )
                        if args.verbose:
                            for at, what in sorted(marks):
                                print(f"  {at - run.start:7.3f}  {what}")
                        for e in proxy.events("turn"):
                            if e["conn"] in conns:
                                per_stage[_stage_of(run, float(e["t"]))] += 1
            med = statistics.median
            print(f"profile {args.profile}, {args.strategy}, {args.iterations} runs (medians)")
            print(f"  warm redeploy direct:        {med(direct):.2f} s  {direct}")
            print(f"  warm redeploy via proxy:     {med(proxied):.2f} s")
            print(
                f"  penalty (+{args.delay_ms:g} ms each way): {med(proxied) - med(direct):+.2f} s"
            )
            print(f"  turns on the wire:           {med(turns)}  {turns}")
            print(f"  remote commands (exec):      {med(commands)}")
            print(f"  readiness probes:            {med(probes)}")
            print("  seconds per stage, direct (medians):")
            for name, values in stages.items():
                print(f"    {med(values):6.2f}  {name}")
            print("  turns per stage (last run):")
            for stage, n in per_stage.items():
                print(f"    {n:3d}  {stage}")
        finally:
            rig.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
