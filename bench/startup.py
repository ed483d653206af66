"""CLI start-up time: `releasegate --help`, a config error, `invoke --list` and an Invoke
config error, for one or two source trees, interleaved (docs/performance.md, "CLI start").

    sudo .venv/bin/python -m bench.startup --runs 30 --tree before=/path/to/old --tree after=.

Each run is one process under SCHED_FIFO (`chrt -f 10`, needs root; `--no-rt` without), so
other jobs on a shared machine do not decide the figure. Medians and minimums, in ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CASES = {
    "releasegate --help": ["releasegate", "--help"],
    "releasegate deploy nosuch": ["releasegate", "deploy", "nosuch"],
    "releasegate --json status nosuch": ["releasegate", "--json", "status", "nosuch"],
    "invoke --list": ["invoke", "--list"],
    "invoke deploy nosuch --lock-wait 1": ["invoke", "deploy", "nosuch", "--lock-wait", "1"],
    "python -c pass": ["python", "-c", "pass"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--no-rt", action="store_true", help="do not run under chrt -f 10")
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": "."}
    prefix = [] if args.no_rt or not shutil.which("chrt") else ["chrt", "-f", "10"]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for case, argv in CASES.items():
            for name, tree in trees.items():
                root = str(Path(tree).resolve())
                exe = str(BIN / argv[0]) if argv[0] != "python" else sys.executable
                env = {**os.environ, "PYTHONPATH": root}  # this tree's deploy/ and smoke/
                started = time.perf_counter()
                subprocess.run(
                    [*prefix, exe, *argv[1:]],
                    cwd=root,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                times.setdefault((case, name), []).append(time.perf_counter() - started)
    print(f"load average {os.getloadavg()}, {args.runs} runs each")
    print("| command | " + " | ".join(f"{n} median (min)" for n in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for case in CASES:
        cells = [
            f"{statistics.median(times[(case, n)]) * 1000:.0f} ms "
            f"({min(times[(case, n)]) * 1000:.0f})"
            for n in trees
        ]
        print(f"| `{case}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
