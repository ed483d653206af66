"""Developer entry point: python -m deploy.sandbox up|down|status [--name N --index I], and
`image`: build the docker provider's image ahead of time (CI overlaps it with other work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.sandbox import PROVIDERS, SandboxError, SandboxSpec, down, status, up


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.sandbox")
    parser.add_argument("command", choices=["up", "down", "status", "image"])
    parser.add_argument("--name", default=SandboxSpec.name)
    parser.add_argument("--index", type=int, default=SandboxSpec.index)
    parser.add_argument("--state-root", type=Path, default=SandboxSpec.state_root)
    parser.add_argument("--provider", choices=PROVIDERS, default=None)
    args = parser.parse_args(argv)
    spec = SandboxSpec(name=args.name, index=args.index, state_root=args.state_root)

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        if args.command == "image":
            from deploy.sandbox import docker, image

            print(image.ensure(docker.engine(), spec.user, log))
        elif args.command == "up":
            print(up(spec, log, provider_name=args.provider))
        elif args.command == "down":
            down(spec, log, provider_name=args.provider)
        else:
            info = status(spec, provider_name=args.provider)
            print(info if info else f"sandbox {spec.name} is not running")
            return 0 if info else 3
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
