"""Starting and stopping the network's native processes, by pid.

Each process runs detached in its own session (so it outlives the `erx up` that started it), logs to
its own file, and is recorded in a pid file together with its start time: a stale pid file whose pid
was reused by an unrelated process is recognised and never signalled.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class ProcessSpec(BaseModel):
    """What to run for one component."""

    name: str
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    log_file: Path
    # Ports the process will bind; checked before start so a taken port fails fast.
    ports: list[int] = Field(default_factory=list)
    # Seconds to wait after the stop signal before SIGKILL (nodes flush their ledgers on SIGTERM).
    stop_timeout_s: float = 15.0
    # What asks the process to stop (PostgreSQL: SIGINT, its fast shutdown; SIGTERM waits for every client).
    stop_signal: int = signal.SIGTERM
    # Run as this OS user (only root can switch): e.g. PostgreSQL, which refuses to run as root.
    # None: as the supervisor's own user.
    user: str | None = None


class ProcessRecord(BaseModel):
    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log_file: Path
    stop_signal: int = signal.SIGTERM


class PortInUse(RuntimeError):
    pass


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces; fields after it are plain.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # zombie: finished, only waiting to be reaped
        return None
    return int(fields[19])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def as_user(name: str | None) -> dict[str, Any]:
    """`subprocess` keyword arguments that run a child as OS user `name` (None: as ourselves): its uid,
    its primary group and exactly its own supplementary groups (none of the caller's, e.g. root's), and
    its HOME/USER/LOGNAME in `env`, to be merged under the caller's own variables."""
    if name is None:
        return {}
    entry = pwd.getpwnam(name)  # KeyError: no such user
    if entry.pw_uid == os.geteuid():
        return {}  # already that user (and only root may set groups)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": os.getgrouplist(name, entry.pw_gid),
            "env": {"HOME": entry.pw_dir, "USER": name, "LOGNAME": name}}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(self, run_dir: Path, host: str = "127.0.0.1"):
        self.run_dir = run_dir
        self.host = host

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def record(self, name: str) -> ProcessRecord | None:
        """The record of a process that is still running, or None (stale records are removed)."""
        path = self._pid_file(name)
        if not path.exists():
            return None
        rec = ProcessRecord.model_validate_json(path.read_text())
        if _start_ticks(rec.pid) != rec.start_ticks:
            path.unlink(missing_ok=True)
            return None
        return rec

    def is_running(self, name: str) -> bool:
        return self.record(name) is not None

    def running(self) -> list[ProcessRecord]:
        if not self.run_dir.exists():
            return []
        recs = (self.record(p.stem) for p in sorted(self.run_dir.glob("*.json")))
        return [r for r in recs if r is not None]

    def start(self, spec: ProcessSpec) -> ProcessRecord:
        """Start `spec` unless it already runs. Fails fast if one of its ports is taken by someone else."""
        existing = self.record(spec.name)
        if existing:
            return existing
        for port in spec.ports:
            if not port_is_free(self.host, port):
                raise PortInUse(
                    f"{spec.name}: port {port} on {self.host} is already in use by another process. "
                    f"Stop that process, or configure another port (see docs/configuration.md)."
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        identity = as_user(spec.user)
        # The log file is opened here, by the supervisor's user: a process run as another user writes to
        # the inherited descriptor and needs no access to the log directory.
        with open(spec.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                spec.argv,
                env={**os.environ, **identity.pop("env", {}), **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # survives the CLI; its own process group for stopping (by pid, whatever user it runs as:
                # only root can start a process as another user, and root may signal it)
                start_new_session=True,
                **identity,
            )
        ticks = _start_ticks(proc.pid)
        rec = ProcessRecord(name=spec.name, pid=proc.pid, start_ticks=ticks or 0, argv=spec.argv,
                            log_file=spec.log_file, stop_signal=spec.stop_signal)
        self._pid_file(spec.name).write_text(rec.model_dump_json())
        return rec

    def exited_early(self, name: str) -> bool:
        """True if a process this supervisor started has already gone."""
        return self._pid_file(name).exists() and self.record(name) is None

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """Signal the process group (SIGTERM, or the spec's `stop_signal`), SIGKILL after `timeout_s`.
        Returns True if something was stopped."""
        rec = self.record(name)
        if rec is None:
            self._pid_file(name).unlink(missing_ok=True)
            return False
        self._signal(rec.pid, rec.stop_signal)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _start_ticks(rec.pid) != rec.start_ticks:
                break
            time.sleep(0.05)
        else:
            self._signal(rec.pid, signal.SIGKILL)
        self._reap(rec.pid)
        self._pid_file(name).unlink(missing_ok=True)
        return True

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)  # the process leads its own group (start_new_session)
        except ProcessLookupError:
            pass

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
