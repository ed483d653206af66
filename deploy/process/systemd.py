"""systemd: one unit per app, rendered from templates/systemd/, driven through `current`.

The unit never names a release. `WorkingDirectory=<root>/current` is resolved when the service
starts, so a restart after the switch runs the new release (the identity gate proves it with
/proc/<MainPID>/cwd), and the release's own environment snapshot — its secrets, process.env,
RELEASE_ID, REVISION, PORT (deploy/release_env.py) — is `<release>/.releasegate.env`, read
through `current` at each start: a restart replaces the environment, never merges. The unit text
therefore changes only when the inventory's process settings change, and `daemon-reload` runs
only then: activation compares the release's copy of the unit with the installed one on the
host, in the same script that restarts the service.

Two scopes (process.systemd.scope):
- system: /etc/systemd/system/<app>.service. Everything that needs root goes through
  `sudo -n` with fixed arguments, so an exact sudoers allowlist (`sudoers_lines`) covers it;
  reading state (`systemctl show`, `systemctl status`) needs no sudo.
- user: ~/.config/systemd/user/<app>.service under the deploy user's own manager
  (`systemctl --user`; linger keeps it running without a session). No root at all.

Blue/green slots (docs/blue-green.md) use a template unit instead, `<app>@.service`, whose
instances are the slots (`<app>@blue.service`, `<app>@green.service`). Each slot has a link of
its own, `<root>/.releasegate/slots/<slot>` → `releases/<id>`, which the flow points at the
release (deploy/slots.py) in the batch that then starts the instance: the instance runs that
release (never `current`), reads that release's env snapshot through the link, and then the
slot's own `<slot>.env` (PORT = the slot's port; a later EnvironmentFile wins). The template
names no release and no port, so it too changes only with the inventory's process settings,
and starting a release in a slot needs no daemon-reload. Both units are rendered into every
release, so a release can be started either way whatever the strategy was when it was shipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from deploy.commands import Cmd, _cmd, _p, _script
from deploy.inventory import Inventory, SystemdConfig
from deploy.model import RELEASE_ENV, Instance, Layout, ProcessSnapshot
from deploy.preflight import Check
from deploy.slots import Slot
from deploy.templates import render

UNIT_NAME = ".releasegate.service"  # the unit as rendered for a release, inside the release
SLOT_UNIT_NAME = ".releasegate@.service"  # the slots' template unit, inside the release
SLOT_NAMES = ("blue", "green")


SYSTEM_UNIT_DIR = PurePosixPath("/etc/systemd/system")
# Absolute paths, because sudoers matches them literally; Debian/Ubuntu (merged /usr) paths.
SUDO = "sudo"
SYSTEMCTL = "/usr/bin/systemctl"
JOURNALCTL = "/usr/bin/journalctl"
INSTALL = "/usr/bin/install"
# sudoers can only allow fixed arguments, so system-scope logs always read this many lines
# from the journal and the host trims them to what was asked for.
JOURNAL_LINES = 200
SHOW_PROPERTIES = "LoadState,ActiveState,SubState,MainPID,NRestarts"

# ExecStart words that need no quoting: no whitespace, quotes, backslash, `$` or `%`.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9._/@+:=,-]+\Z")


@dataclass(frozen=True)
class Systemd:
    inventory: Inventory
    layout: Layout
    name: str = "systemd"

    # ------------------------------------------------------------------ naming

    @property
    def settings(self) -> SystemdConfig:
        settings = self.inventory.process.systemd
        if settings is None:  # the inventory refuses manager: systemd without the section
            raise ValueError("process.systemd is missing for manager: systemd")
        return settings

    @property
    def system(self) -> bool:
        return self.settings.scope == "system"

    @property
    def unit(self) -> str:
        return unit_name(self.inventory.app.name)

    @property
    def staged_unit(self) -> PurePosixPath:
        return staged_unit_path(self.layout, self.unit)

    @property
    def installed_unit(self) -> PurePosixPath:
        """System scope only; a user unit lives under the deploy user's $HOME."""
        return SYSTEM_UNIT_DIR / self.unit

    # ------------------------------------------------------------------ rendering

    def render_unit(self) -> str:
        proc = self.inventory.process
        settings = self.settings
        return render(
            "systemd/app.service.j2",
            app_name=self.inventory.app.name,
            scope=settings.scope,
            root=str(self.layout.root),
            user=self.inventory.host.user,
            group=settings.group,
            working_directory=str(self.layout.current),
            release_env=str(self.layout.current / RELEASE_ENV),
            env_file_name=RELEASE_ENV,
            exec_start=self.exec_start(),
            restart=settings.restart,
            restart_ms=round(settings.restart_sec * 1000),
            kill_timeout_ms=proc.kill_timeout_ms,
        )

    def render_slot_template(self) -> str:
        """`<app>@.service`: the template whose instances are the blue/green slots."""
        proc = self.inventory.process
        settings = self.settings
        return render(
            "systemd/slot.service.j2",
            app_name=self.inventory.app.name,
            scope=settings.scope,
            root=str(self.layout.root),
            user=self.inventory.host.user,
            group=settings.group,
            slots_dir=str(self.layout.slots),
            env_file_name=RELEASE_ENV,
            exec_start=self.exec_start(through=f"{self.layout.slots}/%i"),
            restart=settings.restart,
            restart_ms=round(settings.restart_sec * 1000),
            kill_timeout_ms=proc.kill_timeout_ms,
        )

    def exec_start(self, through: str | None = None) -> str:
        """`ExecStart=` value: the interpreter with the command's words, or the command's
        script itself (an executable in the release, e.g. a Go binary) through `current` -
        or through `through`, a slot's link with the `%i` specifier left for systemd."""
        proc = self.inventory.process
        if proc.interpreter:
            return " ".join(exec_word(w) for w in [proc.interpreter, proc.script, *proc.args])
        if through is None:
            return " ".join(
                exec_word(w) for w in [str(self.layout.current / proc.script), *proc.args]
            )
        script = f"{through}/{proc.script}"
        if not _PLAIN_WORD.match(script.replace("%i", "")):
            raise ValueError(f"a slot's ExecStart path must be plain: {script!r}")
        return " ".join([script, *(exec_word(w) for w in proc.args)])

    def config_files(self, release_id: str) -> dict[str, str]:
        # The release's environment (RELEASE_ENV) is its env snapshot, written by the ship.
        return {UNIT_NAME: self.render_unit(), SLOT_UNIT_NAME: self.render_slot_template()}

    # ------------------------------------------------------------------ commands

    def _ctl(self, *args: str, name: str, privileged: bool) -> Cmd:
        if not self.system:
            return _cmd(name, ["systemctl", "--user", *args])
        if privileged:
            return _cmd(name, [SUDO, "-n", SYSTEMCTL, *args])
        return _cmd(name, [SYSTEMCTL, *args])

    def activate(self, release_id: str) -> list[Cmd]:
        src = self.layout.release(release_id) / UNIT_NAME
        if self.system:
            return [
                _script(
                    "systemd.activate",
                    SYSTEM_ACTIVATE_SCRIPT,
                    [_p(src), _p(self.staged_unit), _p(self.installed_unit), self.unit],
                    f"install {self.unit} if changed (sudo), restart it",
                )
            ]
        return [
            _script(
                "systemd.activate",
                USER_ACTIVATE_SCRIPT,
                [_p(src), self.unit],
                f"install {self.unit} if changed (--user), restart it",
            )
        ]

    def snapshot(self) -> Cmd:
        return self._ctl(
            "show",
            f"--property={SHOW_PROPERTIES}",
            self.unit,
            name="systemd.show",
            privileged=False,
        )

    def parse_snapshot(self, stdout: str) -> ProcessSnapshot:
        return parse_show(stdout)

    def stop(self) -> Cmd:
        return self._ctl("stop", self.unit, name="systemd.stop", privileged=True)

    def persist(self) -> Cmd | None:
        # Start at boot: WantedBy=multi-user.target (system) / default.target (user + linger).
        return self._ctl("enable", self.unit, name="systemd.enable", privileged=True)

    def logs(self, lines: int) -> Cmd:
        return self._journal(self.unit, lines, name="systemd.logs")

    def _journal(self, unit: str, lines: int, *, name: str) -> Cmd:
        if not 1 <= lines <= JOURNAL_LINES:
            raise ValueError(f"logs: lines must be 1..{JOURNAL_LINES}, not {lines}")
        if self.system:
            return _script(
                name,
                SYSTEM_LOGS_SCRIPT,
                [unit, str(lines)],
                f"sudo journalctl -u {unit} (last {lines} lines)",
            )
        return _cmd(
            name,
            ["journalctl", "--user", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
        )

    def describe(self) -> Cmd:
        # `status` shows the state, result, exit status of the last run and the command line;
        # never the environment. --lines=0: the log lines come from `logs`.
        return self._ctl(
            "status",
            "--no-pager",
            "--full",
            "--lines=0",
            self.unit,
            name="systemd.status",
            privileged=False,
        )

    def parse_describe(self, stdout: str) -> str:
        return stdout.strip()

    def sudoers(self, *, slots: bool | None = None) -> list[str]:
        """The exact sudoers lines this app needs (system scope; none for user scope): for
        the one unit of in-place deploys, or for the slots of blue/green ones (`slots`;
        by default as the inventory's strategy says)."""
        if not self.system:
            return []
        if slots is None:
            slots = self.inventory.strategy.kind == "blue-green"
        return sudoers_lines(
            user=self.inventory.host.user,
            app=self.inventory.app.name,
            root=self.layout.root,
            slots=slots,
        )

    # ------------------------------------------------------------------ blue/green slots
    # The protocol's slot methods (deploy/process/base.py). The flow points the slot's link
    # and writes its env file (commands.link_slot) in the same batch, just before start_slot.

    def slot_unit(self, slot: Slot) -> str:
        return slot_unit_name(self.inventory.app.name, slot.name)

    @property
    def template_unit(self) -> str:
        return template_unit_name(self.inventory.app.name)

    @property
    def installed_slot_template(self) -> PurePosixPath:
        """System scope only; a user unit lives under the deploy user's $HOME."""
        return SYSTEM_UNIT_DIR / self.template_unit

    def start_slot(self, slot: Slot, release_id: str) -> list[Cmd]:
        """A fresh start of the slot's instance (`restart`: stop, then start) on the release
        its link names: the template is installed first if the release's copy differs."""
        unit = self.slot_unit(slot)
        src = self.layout.release(release_id) / SLOT_UNIT_NAME
        display = f"start {unit} on {release_id} (127.0.0.1:{slot.port})"
        if self.system:
            staged = staged_unit_path(self.layout, self.template_unit)
            return [
                _script(
                    "systemd.slot.start",
                    SYSTEM_SLOT_START_SCRIPT,
                    [_p(src), _p(staged), _p(self.installed_slot_template), unit],
                    f"{display}, sudo",
                )
            ]
        return [
            _script(
                "systemd.slot.start",
                USER_SLOT_START_SCRIPT,
                [_p(src), self.template_unit, unit],
                f"{display}, --user",
            )
        ]

    def stop_slot(self, slot: Slot) -> Cmd:
        """`disable --now`: stopped, and not started at boot. Nothing to do (exit 0) when the
        template was never installed."""
        unit = self.slot_unit(slot)
        if self.system:
            return _script(
                "systemd.slot.stop",
                SYSTEM_SLOT_STOP_SCRIPT,
                [unit],
                f"sudo systemctl disable --now {unit}",
            )
        return _script(
            "systemd.slot.stop",
            USER_SLOT_STOP_SCRIPT,
            [unit],
            f"systemctl --user disable --now {unit}",
        )

    def slot_snapshot(self, slot: Slot) -> Cmd:
        return self._ctl(
            "show",
            f"--property={SHOW_PROPERTIES}",
            self.slot_unit(slot),
            name="systemd.slot.show",
            privileged=False,
        )

    def parse_slot_snapshot(self, slot: Slot, stdout: str) -> ProcessSnapshot:
        snap = parse_show(stdout)
        # An instance that was never started (or was stopped) is "inactive": the slot runs
        # nothing, which the protocol calls `missing`.
        if snap.status == "stopped":
            return ProcessSnapshot(status="missing", pids=(), restarts=snap.restarts)
        return snap

    def persist_slot(self, slot: Slot) -> Cmd | None:
        return self._ctl(
            "enable", self.slot_unit(slot), name="systemd.slot.enable", privileged=True
        )

    def slot_logs(self, slot: Slot, lines: int) -> Cmd:
        return self._journal(self.slot_unit(slot), lines, name="systemd.slot.logs")

    def slot_describe(self, slot: Slot) -> Cmd:
        return self._ctl(
            "status",
            "--no-pager",
            "--full",
            "--lines=0",
            self.slot_unit(slot),
            name="systemd.slot.status",
            privileged=False,
        )

    def parse_slot_describe(self, slot: Slot, stdout: str) -> str:
        return stdout.strip()

    # ------------------------------------------------------------------ blue/green preflight

    def slots_allowlist_probe(self) -> list[Cmd]:
        """Read-only: may the deploy user run each command of the slots' allowlist (`sudo -n
        -l`, nothing is run)? System scope only; feed stdout to `judge_slots_allowlist`."""
        if not self.system:
            return []
        return [
            _script(
                "systemd.allowlist",
                ALLOWLIST_PROBE_SCRIPT,
                [_allowed(line) for line in self.sudoers(slots=True)],
                "sudo -n -l for each command of the slots' allowlist",
            )
        ]

    def judge_slots_allowlist(self, stdout: str) -> list[Check]:
        """One check: every command of the slots' allowlist may run, or which may not and
        the exact lines to install."""
        if not self.system:
            return []
        lines = self.sudoers(slots=True)
        _, _, section = stdout.partition(ALLOWLIST_MARK + "\n")
        section = section.split("\n@@", 1)[0]
        verdicts = dict(
            (rest, mark == "yes")
            for mark, _, rest in (line.partition(" ") for line in section.splitlines())
            if mark in ("yes", "no")
        )
        missing = [_allowed(line) for line in lines if not verdicts.get(_allowed(line), False)]
        user, app = self.inventory.host.user, self.inventory.app.name
        path = f"/etc/sudoers.d/releasegate-{app}"
        return [
            Check(
                "systemd slots allowlist",
                not missing,
                f"{user} may run the {len(lines)} commands of the slots (sudo -n)"
                if not missing
                else f"{user} may not run `sudo -n {missing[0]}`"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
                f"as root, put these lines in {path} (mode 0440, check with visudo -cf; "
                f"docs/systemd.md): " + "; ".join(lines),
            )
        ]


# ---------------------------------------------------------------------- host scripts


def _install_and_restart_script(*, system: bool, args: str, shipped_for: str, sudoers: str) -> str:
    """Install the release's copy of a unit if it differs from the installed one (then
    daemon-reload), and restart the unit: one shape for both scopes. System scope goes through
    `sudo -n` with fixed arguments (checked first, so a missing allowlist says so) and stages
    its copy where the deploy user may write; user scope installs under $HOME itself."""
    ctl = "sudo -n /usr/bin/systemctl" if system else "systemctl --user"
    show = "systemctl show" if system else "systemctl --user show"
    lines = [
        "",
        "set -e",
        args,
        'if [ ! -f "$src" ]; then',
        f'  echo "$src is missing: the release was not shipped for {shipped_for}; deploy it again"'
        " >&2",
        "  exit 3",
        "fi",
    ]
    if system:
        lines += [
            'if ! sudo -n -l /usr/bin/systemctl restart "$unit" >/dev/null 2>&1; then',
            "  echo \"sudo -n may not run '/usr/bin/systemctl restart $unit' as $(id -un) here:"
            ' install" \\',
            *sudoers.splitlines(),
            "  exit 4",
            "fi",
        ]
    lines += ['if ! cmp -s -- "$src" "$dest"; then']
    if system:
        lines += [
            '  mkdir -p -- "${stage%/*}"',
            '  cp -- "$src" "$stage"',
            '  sudo -n /usr/bin/install -m 0644 "$stage" "$dest"',
        ]
    else:
        lines += ['  mkdir -p -- "${dest%/*}"', '  install -m 0644 -- "$src" "$dest"']
    lines += [
        f"  {ctl} daemon-reload",
        '  echo "unit changed: installed $dest, daemon-reload"',
        f'elif [ "$({show} --property=NeedDaemonReload --value "$unit")" = yes ]; then',
        f"  {ctl} daemon-reload",
        '  echo "systemd had not loaded $dest: daemon-reload"',
        "fi",
        f'{ctl} reset-failed "$unit" 2>/dev/null || true',
        f'{ctl} restart "$unit"',
        "",
    ]
    return "\n".join(lines)


def _slot_stop_script(*, system: bool) -> str:
    """Stopping a slot: $1 the instance. A template that was never installed runs nothing."""
    show = "systemctl show" if system else "systemctl --user show"
    disable = "sudo -n /usr/bin/systemctl" if system else "systemctl --user"
    return (
        f'\n[ "$({show} --property=LoadState --value "$1" 2>/dev/null)" = not-found ] && exit 0\n'
        f'{disable} disable --now "$1"\n'
    )


# Activating the release's unit. system: $1 the unit in the release, $2 its staged copy, $3 the
# installed unit, $4 the unit's name; user: $1 the unit in the release, $2 the unit's name.
SYSTEM_ACTIVATE_SCRIPT = _install_and_restart_script(
    system=True,
    args='src="$1"; stage="$2"; dest="$3"; unit="$4"',
    shipped_for="systemd",
    sudoers='    "the sudoers allowlist (docs/systemd.md, or the sudoers lines releasegate prints)"'
    " >&2",
)
USER_ACTIVATE_SCRIPT = _install_and_restart_script(
    system=False,
    args='src="$1"; unit="$2"; dest="$HOME/.config/systemd/user/$unit"',
    shipped_for="systemd",
    sudoers="",
)

# Starting a slot. system: $1 the release's template, $2 the staged template, $3 the installed
# template, $4 the instance (<app>@<slot>.service); user: $1 the release's template, $2 the
# template's name, $3 the instance. The slot's link and env file are already in place.
SYSTEM_SLOT_START_SCRIPT = _install_and_restart_script(
    system=True,
    args='src="$1"; stage="$2"; dest="$3"; unit="$4"',
    shipped_for="systemd slots",
    sudoers=(
        '    "the sudoers allowlist for blue/green slots (docs/systemd.md, or the sudoers lines"'
        " \\\n"
        '    "releasegate prints)" >&2'
    ),
)
USER_SLOT_START_SCRIPT = _install_and_restart_script(
    system=False,
    args='src="$1"; dest="$HOME/.config/systemd/user/$2"; unit="$3"',
    shipped_for="systemd slots",
    sudoers="",
)

SYSTEM_SLOT_STOP_SCRIPT = _slot_stop_script(system=True)
USER_SLOT_STOP_SCRIPT = _slot_stop_script(system=False)

# Each argument is one command of the allowlist as sudoers names it. Its words are plain (no
# spaces, quotes or glob characters: validated paths, app and unit names), so they are split
# on spaces with globbing off. `sudo -l` only answers; nothing runs.
ALLOWLIST_MARK = "@@systemd-allowlist"
ALLOWLIST_PROBE_SCRIPT = r"""
set -f
echo "@@systemd-allowlist"
for c in "$@"; do
  # shellcheck disable=SC2086
  if sudo -n -l $c >/dev/null 2>&1; then echo "yes $c"; else echo "no $c"; fi
done
"""


def _allowed(line: str) -> str:
    """The command of one sudoers line (`USER ALL=(root) NOPASSWD: <command>`)."""
    return line.split("NOPASSWD: ", 1)[1]


# $1 unit name, $2 lines wanted (<= JOURNAL_LINES). The sudo line has fixed arguments.
SYSTEM_LOGS_SCRIPT = r"""
out=$(sudo -n /usr/bin/journalctl -u "$1" -n 200 --no-pager -o cat) || exit $?
[ -z "$out" ] || printf '%s\n' "$out" | tail -n "$2"
"""


def unit_name(app: str) -> str:
    return f"{app}.service"


def staged_unit_path(layout: Layout, unit: str) -> PurePosixPath:
    """System scope: where a unit file (`<app>.service`, `<app>@.service`) waits for
    `sudo install` — a fixed path, so that the sudoers line can name it exactly (the
    release's own path changes every deploy)."""
    return layout.state / "systemd" / unit


def template_unit_name(app: str) -> str:
    return f"{app}@.service"


def slot_unit_name(app: str, slot: str) -> str:
    _check_slot(slot)
    return f"{app}@{slot}.service"


def _check_slot(slot: str) -> None:
    if slot not in SLOT_NAMES:
        raise ValueError(f"not a slot: {slot!r} (slots are {' and '.join(SLOT_NAMES)})")


def sudoers_lines(*, user: str, app: str, root: PurePosixPath, slots: bool = False) -> list[str]:
    """The system-scope allowlist: one line per command, with exactly the arguments the
    scripts above pass. No wildcards: in sudoers they match across words. `slots`: the lines
    of blue/green deploys (the template unit and its two instances) instead of the one unit's."""
    layout = Layout(root=root)
    if slots:
        template = template_unit_name(app)
        units = [slot_unit_name(app, slot) for slot in SLOT_NAMES]
        allowed = [
            f"{INSTALL} -m 0644 {staged_unit_path(layout, template)} {SYSTEM_UNIT_DIR / template}",
            f"{SYSTEMCTL} daemon-reload",
            *(
                f"{SYSTEMCTL} {verb} {unit}"
                for verb in ("reset-failed", "restart", "disable --now", "enable")
                for unit in units
            ),
            *(f"{JOURNALCTL} -u {unit} -n {JOURNAL_LINES} --no-pager -o cat" for unit in units),
        ]
    else:
        unit = unit_name(app)
        allowed = [
            f"{INSTALL} -m 0644 {staged_unit_path(layout, unit)} {SYSTEM_UNIT_DIR / unit}",
            f"{SYSTEMCTL} daemon-reload",
            f"{SYSTEMCTL} reset-failed {unit}",
            f"{SYSTEMCTL} restart {unit}",
            f"{SYSTEMCTL} stop {unit}",
            f"{SYSTEMCTL} enable {unit}",
            f"{JOURNALCTL} -u {unit} -n {JOURNAL_LINES} --no-pager -o cat",
        ]
    return [f"{user} ALL=(root) NOPASSWD: {command}" for command in allowed]


# ---------------------------------------------------------------------- parsing, quoting

# (ActiveState, SubState) -> the statuses the gate knows (PM2's words). A crash loop shows up
# as activating/auto-restart with NRestarts climbing; the gate fails on the climb.
_STATES = {
    ("active", "running"): "online",
    ("active", "reload"): "online",
    ("activating", "auto-restart"): "restarting",
    ("activating", "start"): "launching",
    ("activating", "start-pre"): "launching",
    ("activating", "start-post"): "launching",
    ("deactivating", "stop-sigterm"): "stopping",
    ("deactivating", "stop-sigkill"): "stopping",
    ("deactivating", "stop"): "stopping",
}


def parse_show(stdout: str) -> ProcessSnapshot:
    """`systemctl show -p LoadState,ActiveState,SubState,MainPID,NRestarts` → snapshot."""
    props: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    if "ActiveState" not in props:
        return ProcessSnapshot(status="unknown", pids=(), restarts=0)
    pid = _int(props.get("MainPID"))
    restarts = _int(props.get("NRestarts"))
    active, sub = props["ActiveState"], props.get("SubState", "")
    if props.get("LoadState", "loaded") != "loaded":
        status = "missing"
    elif active == "failed":
        status = "errored"
    elif active == "inactive":
        status = "stopped"
    else:
        status = _STATES.get((active, sub), f"{active}/{sub}" if sub else active)
    # One main process: a single instance, so "every instance up" means MainPID is running.
    return ProcessSnapshot.of((Instance(id=0, status=status, pid=pid, restarts=restarts),), status)


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def exec_word(word: str) -> str:
    """One word of an `ExecStart=` line, quoted for systemd's own parser (not a shell):
    `$` and `%` are doubled (variable and specifier expansion), quotes and backslashes escaped."""
    if _PLAIN_WORD.match(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'
