"""Both doors are one CLI: every Click command and option exists as an Invoke task and
argument with the same names, and reaches the command with the same value; global options
work after the command; --version; ENV completion. A few real `invoke` / `releasegate`
processes check the paths users reported broken."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from invoke import Collection, Task
from invoke.parser import Parser

from deploy import tasks as door
from deploy.cli import LateGlobalOption, main
from deploy.options import Options

BIN = Path(sys.executable).parent


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name)


LEAVES = list(leaves(main))


def task_at(ns: Collection, path: tuple[str, ...]) -> Task[Any]:
    task = ns[".".join(path)]
    assert isinstance(task, Task)
    return task


def click_options(path: tuple[str, ...]) -> list[click.Parameter]:
    """The command's own parameters and the group's global options (what a user can type)."""
    command = door.command_at(main, path)
    own = [p for p in command.params if not isinstance(p, LateGlobalOption)]
    taken = {o for p in own for o in p.opts}
    globals_ = [
        p
        for p in main.params
        if isinstance(p, click.Option)
        and p.name not in ("help", "version")
        and not taken.intersection(p.opts)
    ]
    return own + globals_


def test_every_command_is_a_task_and_every_task_a_command():
    ns = door.build_namespace()
    assert sorted(ns.task_names) == sorted(".".join(p) for p in LEAVES)


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_option_exists_in_both_doors_with_the_same_names_and_kind(path: tuple[str, ...]):
    arguments = {a.names[0]: a for a in task_at(door.build_namespace(), path).get_arguments()}
    for param in click_options(path):
        if isinstance(param, click.Argument):
            if param.nargs == -1:  # [ENV] [PACK]...: a positional, then a repeatable option
                first, rest = (w.strip("[].").lower() for w in (param.metavar or "").split())
                assert arguments[first].positional
                assert arguments[rest].kind is list
            else:
                assert param.name is not None
                assert arguments[param.name].positional, param.name
            continue
        assert isinstance(param, click.Option)
        longs = [o[2:] for o in param.opts if o.startswith("--")]
        shorts = [o[1:] for o in param.opts if not o.startswith("--")]
        arg = arguments.get(longs[0])
        assert arg is not None, f"{' '.join(path)}: --{longs[0]} is missing from the Invoke task"
        assert arg.names == (*longs, *shorts), (path, arg.names)
        if param.is_flag:
            assert arg.kind is bool and arg.default is False
            for secondary in param.secondary_opts:
                assert arguments[secondary.lstrip("-")].kind is bool
        elif param.multiple:
            assert arg.kind is list
        else:
            # Click converts the text (float, int range, choice, path): same type, same default
            assert arg.kind is str and arg.default is None
    # and nothing in the Invoke task that Click does not have
    click_names = {
        *(n for p in click_options(path) for o in p.opts for n in (o.lstrip("-"),)),
        *(n for p in click_options(path) for o in p.secondary_opts for n in (o.lstrip("-"),)),
    }
    for param in click_options(path):
        if isinstance(param, click.Argument) and param.nargs == -1:
            click_names.update(w.strip("[].").lower() for w in (param.metavar or "").split())
    assert set(arguments) <= click_names | {p.name for p in click_options(path) if p.name}


def sample(param: click.Option) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[-1])
    if isinstance(kind, click.types.FloatParamType):  # inside a FloatRange's bounds
        lo, hi = getattr(kind, "min", None) or 0, getattr(kind, "max", None)
        return str(lo + 1.5 if hi is None else (lo + hi) / 2)
    if isinstance(kind, click.types.IntParamType):
        lo, hi = getattr(kind, "min", None) or 0, getattr(kind, "max", None)
        return str(lo + 2 if hi is None else min(hi, lo + 2))
    return "some-value"


def positionals(path: tuple[str, ...]) -> list[str]:
    command = door.command_at(main, path)
    return ["prod" for p in command.params if isinstance(p, click.Argument)]


def click_parse(path: tuple[str, ...], argv: list[str]) -> tuple[dict[str, Any], object]:
    root = click.Context(main, info_name="releasegate", obj=Options())
    ctx: click.Context = root
    for name in path[:-1]:
        ctx = click.Context(door.command_at(main, path[: path.index(name) + 1]), parent=ctx)
    command = door.command_at(main, path)
    leaf = command.make_context(path[-1], list(argv), parent=ctx)
    return leaf.params, leaf.obj


CASES = [
    (path, param)
    for path in LEAVES
    for param in click_options(path)
    if isinstance(param, click.Option)
]


@pytest.mark.parametrize(
    ("path", "param"),
    CASES,
    ids=[f"{' '.join(p)} {q.opts[-1]}" for p, q in CASES],
)
def test_each_option_reaches_the_command_with_the_value_click_would_give_it(
    path: tuple[str, ...], param: click.Option
):
    flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    typed = [flag] if param.is_flag else [flag, sample(param)]
    if param.multiple:
        typed += typed
    for other in click_options(path):  # required options (lock --message) in every case
        if isinstance(other, click.Option) and other.required and other is not param:
            typed += [other.opts[-1], sample(other)]
    pos = positionals(path)
    ns = door.build_namespace()
    parsed = Parser(contexts=ns.to_contexts()).parse_argv([".".join(path), *typed, *pos])
    task = task_at(ns, path)
    assert isinstance(task, door.ClickTask)
    argv = door.click_argv(path, task.mapped, parsed[0].as_kwargs)
    assert argv[: len(path)] == list(path)
    via_invoke = click_parse(path, argv[len(path) :])
    via_click = click_parse(path, [*typed, *pos])
    assert via_invoke == via_click


# ----------------------------------------------------------------- the Click door itself


def test_global_options_work_after_the_command(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["status", "nosuch", "-v", "--json", "--inventories", str(tmp_path)])
    assert res.exit_code == 2, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["event"] == "outcome" and last["exit_code"] == 2
    assert str(tmp_path / "nosuch.yml") in last["message"]


def test_version():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.output.startswith("releasegate, version ")


def test_shell_completion_offers_the_environments_of_the_inventories_in_use(tmp_path: Path):
    for env in ("prod", "staging", "preview"):
        (tmp_path / f"{env}.yml").write_text("{}\n")
    env = {
        **os.environ,
        "_RELEASEGATE_COMPLETE": "bash_complete",
        "COMP_WORDS": f"releasegate --inventories {tmp_path} deploy pr",
        "COMP_CWORD": "4",
    }
    res = subprocess.run(
        [str(BIN / "releasegate")], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.stdout.split() == ["plain,preview", "plain,prod"]


# ------------------------------------------------------------ real runs of the Invoke door


@pytest.fixture
def app_repo(tmp_path: Path) -> Path:
    """An app repository with the one-line tasks.py of docs/cli.md."""
    (tmp_path / "tasks.py").write_text("from deploy.tasks import ns  # noqa: F401\n")
    (tmp_path / "inventories").mkdir()
    return tmp_path


def invoke(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "invoke"), *args], cwd=repo, capture_output=True, text=True, timeout=120
    )


def test_invoke_lock_wait_takes_a_float_like_click(app_repo: Path):
    res = invoke(app_repo, "deploy", "nosuch", "--lock-wait", "1.5")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "nosuch.yml: no such inventory file" in res.stderr
    bad = invoke(app_repo, "deploy", "nosuch", "--lock-wait", "soon")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Invalid value for '--lock-wait'" in bad.stderr


def test_invoke_rollback_takes_dry_run_and_global_options_after_the_env(app_repo: Path):
    res = invoke(app_repo, "rollback", "nosuch", "--dry-run", "--json", "-v")
    assert res.returncode == 2, res.stderr
    assert "No idea what" not in res.stderr
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    assert (outcome["event"], outcome["op"], outcome["exit_code"]) == ("outcome", "rollback", 2)


@pytest.fixture
def site() -> Iterator[str]:
    """A local HTTP server that answers 200 to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def checks_run(stdout: str) -> set[str]:
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {str(r.get("check")) for r in records if r.get("check")}


def test_invoke_smoke_keeps_audit_like_the_console_script(app_repo: Path, site: str):
    via_invoke = invoke(app_repo, "smoke", site, "--audit", "--json")
    via_click = subprocess.run(
        [str(BIN / "releasegate"), "smoke", "--base-url", site, "--audit", "--json"],
        cwd=app_repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in via_invoke.stderr
    audit = checks_run(via_click.stdout)
    assert audit, via_click.stdout + via_click.stderr
    assert checks_run(via_invoke.stdout) == audit
    assert via_invoke.returncode == via_click.returncode


def test_short_flags_mean_the_same_in_both_doors(app_repo: Path):
    res = invoke(app_repo, "lock", "nosuch", "-m", "db migration")
    assert res.returncode == 2 and "nosuch.yml" in res.stderr, res.stderr
    helped = invoke(app_repo, "--help", "perf")
    assert "-n STRING, --requests=STRING" in helped.stdout
    assert "-c STRING, --concurrency=STRING" in helped.stdout
    # Invoke's automatic short flags are off: no letter means something Click does not say
    deploy_help = invoke(app_repo, "--help", "deploy").stdout
    shorts = set(re.findall(r"^\s+(-[a-zA-Z])\b", deploy_help, re.M))
    assert shorts == {"-v"}, deploy_help
