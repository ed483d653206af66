"""Operations on one host: each builds commands (deploy.commands) and runs them on the Remote.

Steps here do I/O and raise; they never catch errors and never decide between abort and
rollback — deploy.flow does that.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from deploy import commands, journal, lock, port_holders, preflight, release_env
from deploy.commands import Cmd
from deploy.errors import CommandFailure, LockLost, RemoteCommandError, ShipError
from deploy.inventory import Inventory
from deploy.journal import HostState
from deploy.lock import Holder, LeaseKeeper
from deploy.model import (
    RELEASE_ENV,
    Artifact,
    IdentityFacts,
    Layout,
    Manifest,
    ProcessSnapshot,
    ReleaseState,
)
from deploy.process import ProcessManager
from deploy.redact import Redactor
from deploy.release_packs import Bundle
from deploy.remote import Remote, Result
from deploy.slots import Slot


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass
class HostOps:
    inventory: Inventory
    remote: Remote
    manager: ProcessManager
    layout: Layout
    actor: str
    lock_token: str | None = field(default=None)
    state_at_lock: HostState | None = field(default=None)
    # Every journal record passes through it (gate evidence carries response bodies and
    # stderr tails, forensics carry log lines).
    redact: Redactor = field(default_factory=Redactor)
    machine: str = field(default_factory=socket.gethostname)  # in the lock's owner record
    lease_s: int = field(default=0)  # the lease of the lock we hold (0: none, a manual lock)
    uploads: list[PurePosixPath] = field(default_factory=list)  # this run's, on the host
    # the manifest each release shipped by this run was given (a migration adds its schema)
    shipped: dict[str, Manifest] = field(default_factory=dict)
    released_ours: bool = field(default=True)  # False: at its release, the lock was not ours

    @property
    def label(self) -> str:
        return self.inventory.host.name

    # ------------------------------------------------------------ state, lock, journal

    def read_state(self) -> HostState:
        out = self.remote.run(commands.read_state(self.layout)).stdout
        return journal.parse_state(out)

    def preflight_facts(self) -> dict[str, str]:
        return self.preflight_round_trip([])[0]

    def preflight_round_trip(self, extra: list[Cmd]) -> tuple[dict[str, str], str]:
        """The host's preflight facts, with the read-only `extra` steps (the strategy's) in
        the same round trip; their output is the stdout returned beside the facts."""
        inv = self.inventory
        manager = inv.process.pm2 if inv.process.manager == "pm2" else "systemctl"
        cmd = commands.preflight_probe(
            self.layout,
            manager=manager,
            shared_files=[*inv.app.shared_files, *([".env"] if inv.secrets.enabled else [])],
            runtimes=list(inv.preflight.runtimes),
            migration_check=inv.preflight.migration_check,
            migration_timeout=inv.preflight.migration_timeout,
        )
        if extra:  # (read-only like the probe: a dry run runs it too)
            cmd = commands.batch(cmd.name, [cmd, *extra], cmd.display)
        stdout = self.remote.run(cmd).stdout
        return preflight.parse_probe(stdout.split("\n@@", 1)[0]), stdout

    def upload_env_file(self, content: str, workdir: Path) -> PurePosixPath:
        """The secrets part of the release's env snapshot, on a command's stdin into the 0700
        uploads dir (commands.install_release_env then moves it into the release with mode
        0600): values never appear on a command line."""
        local = workdir / f"env.{new_token()[:8]}"
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        upload = self._upload_path(local.name)
        try:
            self.remote.put(local, upload)
        finally:
            local.unlink()
        return upload

    def _upload_path(self, name: str) -> PurePosixPath:
        # Registered before the transfer starts: an interrupted transfer leaves a file too.
        upload = self.layout.uploads / name
        self.uploads.append(upload)
        return upload

    def remove_uploads(self) -> None:
        """This run's uploads, after an abort: the ship did not consume them."""
        if self.uploads:
            self.remote.run(commands.remove_uploads(self.uploads), check=False)
            self.uploads.clear()

    def prepare(self) -> None:
        self.remote.run(commands.prepare_layout(self.layout))

    def try_lock(self, op: str, now: datetime, message: str = "") -> str | None:
        """Take the lock: None when taken, else the holder's lock view as on the host."""
        token = new_token()
        lease_s = 0 if op == lock.MANUAL else self.inventory.lock.lease
        owner = lock.owner_record(
            token=token,
            actor=self.actor,
            op=op,
            now=now,
            message=message,
            machine=self.machine,
            lease_s=lease_s,
        )
        # One round trip: make the layout, take the lock, and read what the flow decides from.
        steps = [
            commands.prepare_layout(self.layout),
            commands.acquire_lock(self.layout, token, owner, lease_s),
            commands.read_state(self.layout),
        ]
        res = self.remote.run(
            commands.batch("lock", steps, f"prepare and lock {self.layout.root}"), check=False
        )
        if res.step == "lock.acquire" and res.exit_code == commands.LOCK_HELD:
            return res.stdout.strip()
        if not res.ok:
            raise RemoteCommandError(
                commands_failure(self.remote, res.step or "lock", res),
                what=f"taking the lock {self.layout.lock}",
            )
        self.lock_token = token
        self.lease_s = lease_s
        # (a dry run only shows the batch: then the state is read on its own)
        self.state_at_lock = journal.parse_state(res.stdout) if "@@current" in res.stdout else None
        return None

    def break_lock(self, holder: Holder, *, force: bool) -> bool:
        """Remove that holder's lock — once its lease has ended, or with `force` — in one
        atomic step on the host; False if it was not removed (gone, renewed, changed hands)."""
        res = self.remote.run(
            commands.break_lock(
                self.layout,
                holder.instance,
                new_token(),
                force=force,
                legacy_owner="" if holder.instance else holder.key,
            ),
            check=False,
        )
        return res.ok and commands.LOCK_BROKEN in res.stdout

    def release_steps(self) -> list[Cmd]:
        """Our lock's release as the last step of an operation's final batch (one round trip
        less); after the batch ran to its end, call `released_by` with its result."""
        if self.lock_token is None:
            return []
        return [commands.release_lock(self.layout, self.lock_token, new_token())]

    def released_by(self, res: Result) -> None:
        self.lock_token = None
        self.released_ours = commands.LOCK_GONE not in res.stdout

    def release_lock(self) -> bool:
        """Release our lock; False when it was no longer ours (broken after our lease lapsed)."""
        if self.lock_token is None:
            return self.released_ours
        res = self.remote.run(commands.release_lock(self.layout, self.lock_token, new_token()))
        self.lock_token = None
        return commands.LOCK_GONE not in res.stdout

    def renew_lease(self) -> str | None:
        """Renew our lease: None when renewed, else why the lock is no longer ours."""
        token = self.lock_token
        if token is None:
            return "the lock was released"
        timeout = max(1.0, self.lease_s / 3)
        renew = commands.renew_lease(self.layout, token)
        res = self.remote.run(renew, check=False, timeout=timeout)
        if res.ok:
            return None
        if res.exit_code == commands.LOCK_HELD:
            return res.stdout.strip() or "the lock is no longer ours"
        raise RemoteCommandError(commands_failure(self.remote, "lock.renew", res))

    def keep_lease(self) -> LeaseKeeper | None:
        """Start renewing our lease in the background (every lease/3 seconds)."""
        if self.lock_token is None or not self.lease_s:
            return None
        return LeaseKeeper(self.renew_lease, interval=max(1.0, self.lease_s / 3)).start()

    def lease_guard(self) -> list[Cmd]:
        """A first step for a batch that changes live state: it renews our lease and stops
        the batch (LockLost) if the lock is no longer ours, before anything else runs."""
        if self.lock_token is None or not self.lease_s:
            return []
        return [commands.renew_lease(self.layout, self.lock_token)]

    def _entry(
        self,
        now: datetime,
        op: str,
        release: str | None,
        state: ReleaseState | None,
        detail: dict[str, object],
    ) -> dict[str, object]:
        item = journal.entry(
            now=now, op=op, actor=self.actor, release=release, state=state, **detail
        )
        return {key: self.redact.deep(value) for key, value in item.items()}

    def record(
        self,
        now: datetime,
        op: str,
        release: str | None = None,
        state: ReleaseState | None = None,
        **detail: object,
    ) -> None:
        item = self._entry(now, op, release, state, detail)
        self.remote.run(commands.append_journal(self.layout, [item]))

    # ------------------------------------------------------------ ship

    def prune(self, names: tuple[str, ...]) -> None:
        self.remote.run(commands.prune_releases(self.layout, names))

    def remove_partials(self, names: frozenset[str]) -> None:
        for name in sorted(names):
            self.remote.run(commands.remove_partial(self.layout.releases / name))

    def upload_artifact(self, artifact: Artifact) -> PurePosixPath:
        upload = self._upload_path(f"{artifact.release_id}.tar.gz.{new_token()[:8]}")
        self.remote.put(Path(artifact.path), upload)
        return upload

    def ship_steps(
        self,
        artifact: Artifact,
        upload: PurePosixPath,
        now: datetime,
        *,
        reuse_from: str | None,
        env_upload: PurePosixPath | None = None,
        smoke: Bundle | None = None,
        migration: Mapping[str, object] | None = None,
    ) -> list[Cmd]:
        """Verify, extract, write the release's env snapshot, link shared, write the process
        config, install (or reuse the dependencies of `reuse_from`, a good release), write the
        manifest, rename into place. Nothing outside the new release is written."""
        rid = artifact.release_id
        partial = self.layout.partial(rid)
        app = self.inventory.app
        proc = self.inventory.process
        steps = [commands.verify_and_extract(upload, artifact.sha256, partial)]
        settings = release_env.render_settings(
            release_id=rid, revision=artifact.revision, port=proc.port, env=proc.env
        )
        steps.append(
            commands.install_release_env(
                partial / RELEASE_ENV,
                settings=settings,
                upload=env_upload,
                # without secrets: configured, a hand-maintained shared/.env is sealed in
                shared_env=None if self.inventory.secrets.enabled else self.layout.shared / ".env",
            )
        )
        if app.shared_files or app.shared_dirs:
            steps.append(
                commands.link_shared(self.layout, partial, app.shared_files, app.shared_dirs)
            )
        for rel, content in self.manager.config_files(rid).items():
            steps.append(commands.write_file(partial / rel, content, label=f"{rid}/{rel}"))
        if app.install:
            source = self.layout.release(reuse_from) if reuse_from and app.reuse_deps else None
            install = commands.reuse_or_install(
                source,
                partial,
                app.install,
                lockfile=app.deps_lockfile,
                manifest=app.deps_manifest,
                deps_dir=app.deps_dir,
                runtimes=app.deps_runtimes,
            )
            steps.append(commands.bounded(install, app.install_timeout))
        manifest = Manifest(
            id=rid,
            revision=artifact.revision,
            sha256=artifact.sha256,
            created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            actor=self.actor,
            tags=artifact.tags,
            smoke_sha256=smoke.sha256 if smoke is not None else None,
            smoke_packs=smoke.names() if smoke is not None else (),
            migration=migration,
        )
        self.shipped[rid] = manifest
        # The manifest is written last: its presence is what makes a release complete.
        steps.append(commands.write_manifest(partial, manifest))
        steps.append(commands.finalize_release(partial, self.layout.release(rid)))
        return steps

    def run_batch(
        self, name: str, steps: list[Cmd], display: str, timeout: float | None = None
    ) -> Result:
        """One round trip for the steps of a phase. Failures name the step that failed."""
        res = self.remote.run(commands.batch(name, steps, display), check=False, timeout=timeout)
        if res.ok:
            return res
        if res.step == "release.extract" and res.exit_code == commands.CHECKSUM_MISMATCH:
            raise ShipError(
                f"the artifact arrived corrupted on {self.label} ({res.stdout.strip()}); "
                f"nothing was extracted. Retry the deploy."
            )
        if res.step == "lock.renew":
            raise LockLost(
                f"{display} did not start: the lock {self.layout.lock} on {self.label} is no "
                f"longer ours ({(res.stdout or res.stderr).strip()}). Someone forced it (`unlock "
                f"--force`), or our lease lapsed — the link to the host stalled for longer than "
                f"lock.lease ({self.lease_s}s) — and another run may hold the lock now. "
                f"Nothing more was changed by this run; check `releasegate status "
                f"{self.inventory.env}`."
            )
        step = next((s for s in steps if s.name == res.step), None)
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
        if step is not None and step.limit is not None and res.exit_code in commands.TIMED_OUT:
            tail = (
                f"timed out: the host stopped it (and everything it started) after its "
                f"deadline of {step.limit:g}s; raise app.install_timeout / "
                f"process.activate_timeout in the inventory if it needs longer"
                + (f"\n{tail}" if tail else "")
            )
        raise RemoteCommandError(
            CommandFailure(
                display=(step or commands.batch(name, steps, display)).display,
                exit_code=res.exit_code,
                stderr_tail=tail,
                host=self.remote.host_label,
            ),
            what=display,
        )

    def journal_cmd(
        self,
        now: datetime,
        op: str,
        release: str | None = None,
        state: ReleaseState | None = None,
        **detail: object,
    ) -> Cmd:
        return commands.append_journal(self.layout, [self._entry(now, op, release, state, detail)])

    # ------------------------------------------------------------ activate

    def switch(self, release_id: str) -> None:
        self.remote.run(commands.switch_current(self.layout, release_id, new_token()))

    def activate_steps(self, release_id: str) -> list[Cmd]:
        return [
            commands.switch_current(self.layout, release_id, new_token()),
            *self._activation(release_id),
        ]

    def _activation(self, release_id: str) -> list[Cmd]:
        # Bounded on the host: a reload that hangs is stopped there, not left running.
        limit = self.inventory.process.activate_timeout
        return [commands.bounded(cmd, limit) for cmd in self.manager.activate(release_id)]

    def reload(self, release_id: str) -> str:
        """Activate the release `current` points to; its stdout (see activation_notes)."""
        return "".join(self.remote.run(cmd).stdout for cmd in self._activation(release_id))

    def snapshot(self, timeout: float | None = None) -> ProcessSnapshot:
        """The process manager's view. With `timeout`, a manager that does not answer in time
        (a hung `pm2 jlist`) is an error, never a wait without end."""
        return self.manager.parse_snapshot(self._read_processes(self.manager.snapshot(), timeout))

    def slot_snapshot(self, slot: Slot, timeout: float | None = None) -> ProcessSnapshot:
        """A blue/green slot's processes, bounded like `snapshot`."""
        stdout = self._read_processes(self.manager.slot_snapshot(slot), timeout)
        return self.manager.parse_slot_snapshot(slot, stdout)

    def snapshot_with_identity(
        self, release_id: str, pids: tuple[int, ...], timeout: float | None = None
    ) -> tuple[ProcessSnapshot, IdentityFacts | None]:
        """`snapshot` and the identity facts of `pids` (the gate's closing read) in one round
        trip; facts None when the process manager's read failed (then read them alone)."""
        snapshot, facts = self._with_identity(self.manager.snapshot(), release_id, pids, timeout)
        return self.manager.parse_snapshot(snapshot), facts

    def slot_snapshot_with_identity(
        self, slot: Slot, release_id: str, pids: tuple[int, ...], timeout: float | None = None
    ) -> tuple[ProcessSnapshot, IdentityFacts | None]:
        """The same for a blue/green slot."""
        cmd = self.manager.slot_snapshot(slot)
        snapshot, facts = self._with_identity(cmd, release_id, pids, timeout)
        return self.manager.parse_slot_snapshot(slot, snapshot), facts

    def _with_identity(
        self, read: Cmd, release_id: str, pids: tuple[int, ...], timeout: float | None
    ) -> tuple[str, IdentityFacts | None]:
        # A fresh marker between the two outputs: the manager's (PM2's jlist carries every
        # process's environment) cannot contain it.
        marker = f"@@identity-{new_token()}"
        identity = commands.process_identity(self.layout.release(release_id), pids)
        cmd = commands.batch(
            "gate.close",
            [read, commands.echo_marker(marker), identity],
            f"{read.display}; {identity.display}",
        )
        stdout = self._read_processes(cmd, timeout)
        snapshot, found, rest = stdout.partition(f"{marker}\n")
        return snapshot, parse_identity(rest) if found else None

    def _read_processes(self, cmd: Cmd, timeout: float | None) -> str:
        res = self.remote.run(cmd, check=False, timeout=timeout)
        if timeout is not None and res.exit_code in commands.TIMED_OUT:
            raise RemoteCommandError(
                CommandFailure(
                    display=cmd.display,
                    exit_code=res.exit_code,
                    stderr_tail=f"no answer within {timeout:.1f}s (bounded by the gate's deadline)",
                    host=self.remote.host_label,
                ),
                what="reading the process state",
            )
        return res.stdout

    def identity_facts(
        self, release_id: str, pids: tuple[int, ...], timeout: float | None = None
    ) -> IdentityFacts:
        """cwd of every pid, the release directory resolved on the host, and its manifest."""
        cmd = commands.process_identity(self.layout.release(release_id), pids)
        return parse_identity(self.remote.run(cmd, timeout=timeout).stdout)

    def forensics(self, lines: int = 40) -> tuple[str, str]:
        """The app's last log lines and its process state, as the manager reports them."""
        logs = self.remote.run(self.manager.logs(lines), check=False, timeout=30)
        state = self.remote.run(self.manager.describe(), check=False, timeout=30)
        return _log_text(logs), self.manager.parse_describe(state.stdout)

    def port_note(self, port: int) -> str:
        """What holds `port` besides the app's PM2 processes, as the fix to tell a human; ""
        when nothing does or it cannot be read (systemd stops a unit's whole cgroup: a
        forked daemon never outlives its release there)."""
        if self.manager.name != "pm2":
            return ""
        res = self.remote.run(commands.port_holders(port), check=False, timeout=30)
        if res.exit_code != 0:
            return ""
        return port_holders.stray_note(
            port_holders.parse(res.stdout), port=port, app=self.inventory.app.name, host=self.label
        )

    def slot_forensics(self, slot: Slot, lines: int = 40) -> tuple[str, str]:
        """The same for a blue/green slot."""
        logs = self.remote.run(self.manager.slot_logs(slot, lines), check=False, timeout=30)
        state = self.remote.run(self.manager.slot_describe(slot), check=False, timeout=30)
        return _log_text(logs), self.manager.parse_slot_describe(slot, state.stdout)

    # ------------------------------------------------------------ blue/green slots

    def slot_start_steps(self, slot: Slot, release_id: str) -> list[Cmd]:
        """Point the slot at the release, then start it afresh; bounded on the host like an
        activation (a start that hangs is stopped there)."""
        limit = self.inventory.process.activate_timeout
        return [
            commands.link_slot(self.layout, slot.name, release_id, slot.port, new_token()),
            *(commands.bounded(cmd, limit) for cmd in self.manager.start_slot(slot, release_id)),
        ]

    def slot_stop_steps(self, slot: Slot) -> list[Cmd]:
        limit = self.inventory.process.activate_timeout
        return [
            commands.bounded(self.manager.stop_slot(slot), limit),
            commands.unlink_slot(self.layout, slot.name),
        ]

    def stop_app(self) -> None:
        self.remote.run(self.manager.stop(), check=False)

    def persist(self) -> None:
        cmd = self.manager.persist()
        if cmd is not None:
            self.remote.run(cmd, check=False)


def _log_text(logs: Result) -> str:
    if logs.ok:
        return logs.stdout.rstrip()
    why = (logs.stderr or logs.stdout).strip()[-300:]
    return f"(no logs: exit {logs.exit_code}: {why})"


def commands_failure(remote: Remote, name: str, res: Result) -> CommandFailure:
    return CommandFailure(
        display=name,
        exit_code=res.exit_code,
        stderr_tail="\n".join((res.stderr or res.stdout).strip().splitlines()[-6:]),
        host=remote.host_label,
    )


def parse_identity(stdout: str) -> IdentityFacts:
    """Parse the output of commands.IDENTITY_SCRIPT."""
    release_dir: str | None = None
    current: str | None = None
    cwds: dict[int, str] = {}
    manifest_lines: list[str] = []
    in_manifest = False
    for line in stdout.splitlines():
        if in_manifest:
            manifest_lines.append(line)
        elif line.startswith("@@release "):
            value = line[len("@@release ") :].strip()
            release_dir = value if value.startswith("/") else None
        elif line.startswith("@@current "):
            current = line[len("@@current ") :].strip()
        elif line.startswith("@@manifest"):
            in_manifest = True
        else:
            pid, _, cwd = line.partition(" ")
            if pid.isdigit():
                cwds[int(pid)] = cwd.strip()
    try:
        loaded = json.loads("\n".join(manifest_lines)) if manifest_lines else {}
    except (json.JSONDecodeError, RecursionError):  # garbage on the host
        loaded = {}
    return IdentityFacts(
        release_dir=release_dir,
        cwds=cwds,
        manifest=loaded if isinstance(loaded, dict) else {},
        current=current,
    )
