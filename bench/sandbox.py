"""What the rehearsal costs (issue 12): sandbox up (cold and warm) and down for each provider,
and one warm deploy on each, in one run.

    python -m bench.sandbox --json bench/results/sandbox.json
    python -m bench.sandbox --cold        # docker: remove its cached images first

"Cold" is the first up on this machine: for docker it builds the image (debootstrap of the
Debian base, import, build), for namespaces it only makes the keys. "Warm" is an up after a
down (docker: image cached). The warm deploy is the second deploy of the sample app (PM2,
in place) on the sandbox, so the first deploy's PM2 daemon start and npm install are not in
it. Needs root for the namespaces provider and a Docker engine for the docker one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rig import Rig, load_average, machine
from deploy.sandbox import SandboxSpec, image

# Their own names and subnets, beside the test suites' and the other benchmarks'.
SPECS = {"namespaces": ("rgbsns", 44), "docker": ("rgbsdk", 45)}
HEALTH = {"deadline": 15, "interval": 0.3, "successes": 3, "stable_for": 1}


def forget_docker_images(say: Any) -> None:
    from deploy.sandbox import docker

    client = docker.engine()
    for img in client.images.list():
        if any(
            t.startswith((f"{image.REPOSITORY}:", f"{image.BASE_REPOSITORY}:")) for t in img.tags
        ):
            say(f"removing cached image {', '.join(img.tags)}")
            client.images.remove(img.id, force=True)


def measure(provider: str, work: Path, cold: bool, say: Any) -> dict[str, float]:
    name, index = SPECS[provider]
    spec = SandboxSpec(name=name, index=index, state_root=work / "state")
    out: dict[str, float] = {}
    if cold and provider == "docker":
        forget_docker_images(say)
    rig = Rig(spec, work / provider, HEALTH, log=lambda line: None, provider=provider)
    start = time.monotonic()
    rig.up()
    out["up_first_s"] = time.monotonic() - start
    start = time.monotonic()
    rig.down()
    out["down_s"] = time.monotonic() - start
    start = time.monotonic()
    rig.up()
    out["up_warm_s"] = time.monotonic() - start
    try:
        app = rig.app("warm")
        first = app.deploy()
        app.commit()
        warm = app.deploy()
        if first.code != 0 or warm.code != 0:
            raise RuntimeError(f"deploys on {provider} exited {first.code}, {warm.code}")
        out["first_deploy_s"] = first.seconds
        out["warm_deploy_s"] = warm.seconds
    finally:
        start = time.monotonic()
        rig.down()
        out["down_after_deploy_s"] = time.monotonic() - start
    say(f"{provider}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__)
    p.add_argument("--providers", default="namespaces,docker")
    p.add_argument("--cold", action="store_true", help="docker: remove the cached images first")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "machine": machine(),
        "load_before": load_average(),
        "cold": args.cold,
    }
    with tempfile.TemporaryDirectory(prefix="rg-bench-sandbox-") as tmp:
        for provider in args.providers.split(","):
            results[provider] = measure(provider, Path(tmp), args.cold, say)
    results["load_after"] = load_average()
    rows = ["| provider | " + " | ".join(next(v for k, v in results.items() if k in SPECS)) + " |"]
    rows.append("|---" * (len(rows[0].split("|")) - 2) + "|")
    for provider in SPECS:
        if provider in results:
            rows.append(
                f"| {provider} | "
                + " | ".join(f"{v:.2f}" for v in results[provider].values())
                + " |"
            )
    print("\n".join(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
