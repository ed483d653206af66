"""The Invoke door, generated from the Click commands so the two doors cannot drift apart.

Each Click command becomes an Invoke task with the same options (long and short names, flags,
repeatable options) plus the global ones (--inventories, --plain, -v, --json); a group becomes
a collection (`invoke sandbox.up`, `invoke ci.github`). A task turns what Invoke parsed back
into the command line and runs the Click command with it, so every value is converted,
checked and defaulted by Click: the same types, defaults, errors and exit codes in both doors.

In an app repository, a one-line `tasks.py` brings them in (docs/cli.md):

    from deploy.tasks import ns  # noqa: F401  (releasegate's Invoke tasks)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from invoke import Collection, Context, Exit, Task
from invoke.parser import Argument


@dataclass(frozen=True)
class Mapped:
    """One Invoke argument and how its value goes back onto the Click command line."""

    argument: Argument
    flag: str | None  # the Click option it sets (None: a positional value)
    kind: str  # "flag", "value", "multiple", "positional", "rest"


def _doc(command: click.Command) -> str:
    """The command's help with its first paragraph on one line (Invoke lists that line)."""
    paragraphs = (command.help or command.short_help or "").strip().split("\n\n")
    first = " ".join(line.strip() for line in paragraphs[0].splitlines())
    return "\n\n".join([first, *paragraphs[1:]])


def _help(param: click.Parameter) -> str:
    text = getattr(param, "help", None) or ""
    default = param.default
    shown = isinstance(default, str | int | float | Path) and not isinstance(default, bool)
    if isinstance(param, click.Option) and not param.is_flag and shown and default != "":
        text = f"{text} [default: {default}]".strip()
    if isinstance(param.type, click.Choice):
        text = f"{text} (one of: {', '.join(map(str, param.type.choices))})".strip()
    return text


def _names(option: click.Option) -> tuple[str, ...]:
    longs = [o[2:] for o in option.opts if o.startswith("--")]
    shorts = [o[1:] for o in option.opts if not o.startswith("--")]
    return (*longs, *shorts)


def _click_params(path: tuple[str, ...], root: click.Group) -> Iterator[click.Parameter]:
    """The command's own parameters, then the global options it does not define itself.
    Copies of the global options on the command (deploy.cli.LateGlobalOption) are skipped:
    the group's originals stand for them."""
    from deploy.cli import LateGlobalOption

    command = command_at(root, path)
    own = [p for p in command.params if not isinstance(p, LateGlobalOption)]
    taken = {o for p in own for o in p.opts}
    yield from own
    for param in root.params:
        if param.name == "help" or not isinstance(param, click.Option):
            continue
        if not taken.intersection(param.opts) and "--version" not in param.opts:
            yield param


def command_at(root: click.Group, path: tuple[str, ...]) -> click.Command:
    command: click.Command = root
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def mapping(path: tuple[str, ...], root: click.Group) -> list[Mapped]:
    """The Invoke arguments of the command at `path`, positionals first (Invoke fills them in
    order)."""
    positional: list[Mapped] = []
    options: list[Mapped] = []
    for param in _click_params(path, root):
        if isinstance(param, click.Argument):
            name = param.name or "arg"
            if param.nargs == -1:
                # `[ENV] [PACK]...`: the first value positionally, the rest as a repeatable
                # option named after the second word (`invoke smoke prod --pack a --pack b`).
                words = [w.strip("[].").lower() for w in (param.metavar or name).split()]
                first, rest = words[0], (words[1] if len(words) > 1 else name)
                positional.append(
                    Mapped(
                        # Invoke fills a positional only while its value is None, so it
                        # is required here: `invoke smoke URL`, `invoke smoke --base-url
                        # URL PACK`.
                        _arg(names=(first,), kind=str, default=None, positional=True),
                        None,
                        "positional",
                    )
                )
                options.append(
                    Mapped(
                        _arg(
                            names=(rest,),
                            kind=list,
                            default=[],
                            help=f"another {rest.upper()} (repeatable)",
                        ),
                        None,
                        "rest",
                    )
                )
            else:
                positional.append(
                    Mapped(
                        _arg(
                            names=(name,),
                            kind=str,
                            default=None,
                            positional=True,
                        ),
                        None,
                        "positional",
                    )
                )
            continue
        assert isinstance(param, click.Option)
        names = _names(param)
        long = next(o for o in param.opts if o.startswith("-"))
        long = next((o for o in param.opts if o.startswith("--")), long)
        if param.is_flag and not param.count:
            options.append(
                Mapped(
                    _arg(names=names, kind=bool, default=False, help=_help(param)),
                    long,
                    "flag",
                )
            )
            for secondary in param.secondary_opts:  # --audit/--no-audit: both are flags
                options.append(
                    Mapped(
                        _arg(
                            names=(secondary.lstrip("-"),),
                            kind=bool,
                            default=False,
                            help=f"the opposite of {long}",
                        ),
                        secondary,
                        "flag",
                    )
                )
        elif param.multiple:
            options.append(
                Mapped(
                    _arg(names=names, kind=list, default=[], help=_help(param)),
                    long,
                    "multiple",
                )
            )
        else:
            # A string, whatever Click's type: Click converts and checks it (a float for
            # --lock-wait, a range, a choice), so both doors accept and refuse the same values.
            options.append(
                Mapped(
                    _arg(names=names, kind=str, default=None, help=_help(param)),
                    long,
                    "value",
                )
            )
    return positional + options


def click_argv(path: tuple[str, ...], mapped: list[Mapped], values: dict[str, Any]) -> list[str]:
    """The `releasegate` command line equivalent to what Invoke parsed."""
    options: list[str] = []
    positionals: list[str] = []
    for m in mapped:
        value = values.get(_key(m.argument))
        if m.kind == "flag":
            if value:
                assert m.flag is not None
                options.append(m.flag)
        elif m.kind == "multiple":
            assert m.flag is not None
            for item in value or ():
                options += [m.flag, str(item)]
        elif m.kind == "value":
            if value is not None:
                assert m.flag is not None
                options += [m.flag, str(value)]
        elif m.kind == "positional":
            if value not in (None, ""):
                positionals.append(str(value))
        else:  # rest
            positionals += [str(v) for v in value or ()]
    return [*path, *options, *(["--", *positionals] if positionals else [])]


class ClickTask(Task[Any]):
    """An Invoke task that runs a Click command of `releasegate` with the same arguments."""

    def __init__(self, root: click.Group, path: tuple[str, ...]) -> None:
        self.click_root = root
        self.click_path = path
        self.mapped = mapping(path, root)

        def body(c: Context, **values: Any) -> None:
            self.run_click(values)

        command = command_at(root, path)
        body.__doc__ = _doc(command)
        super().__init__(
            body,
            name=path[-1],
            positional=[_key(m.argument) for m in self.mapped if m.kind == "positional"],
            auto_shortflags=False,
        )

    def __deepcopy__(self, memo: dict[int, object]) -> ClickTask:
        # Invoke deep-copies a module's collection when it loads tasks.py; a task here holds
        # the whole Click tree and changes nothing after it is built, so a shallow copy does
        # (the deep copy cost 0.2 s of every `invoke` start).
        return copy.copy(self)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        # Fresh Argument objects for each parse: Invoke stores parsed values on them.
        return [
            Argument(
                names=m.argument.names,
                kind=m.argument.kind,
                default=m.argument.default,
                help=m.argument.help,
                positional=m.argument.positional,
                attr_name=m.argument.attr_name,
            )
            for m in self.mapped
        ]

    def run_click(self, values: dict[str, Any]) -> None:
        argv = click_argv(self.click_path, self.mapped, values)
        try:
            self.click_root.main(args=argv, prog_name="invoke", standalone_mode=True)
        except SystemExit as exc:
            code = exc.code
            if code not in (None, 0):
                raise Exit(code=code if isinstance(code, int) else 1) from None


def _key(argument: Argument) -> str:
    """The keyword Invoke passes the argument's value under."""
    return argument.attr_name or argument.names[0]


def _arg(names: tuple[str, ...], **kwargs: Any) -> Argument:
    """An Invoke argument whose value arrives under a Python name (lock-wait → lock_wait)."""
    attr = names[0].replace("-", "_")
    return Argument(names=names, attr_name=attr if attr != names[0] else None, **kwargs)


def _collection(
    root: click.Group, group: click.Group, path: tuple[str, ...], name: str | None
) -> Collection:
    coll = Collection(name) if name else Collection()
    for cmd_name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            coll.add_collection(_collection(root, command, (*path, cmd_name), cmd_name))
        else:
            coll.add_task(ClickTask(root, (*path, cmd_name)))
    return coll


def build_namespace(root: click.Group | None = None) -> Collection:
    """A fresh collection of every `releasegate` command as an Invoke task."""
    if root is None:
        from deploy.cli import main

        root = main
    return _collection(root, root, (), None)


ns = build_namespace()
