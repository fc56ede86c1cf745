"""A local PostgreSQL cluster as a native process, for when the controllers' records and the agents'
wallets are kept in PostgreSQL instead of the embedded SQLite files.

Programs: Debian's, from /usr/lib/postgresql/<version>/bin (the newest version; a cluster keeps the
version it was created with). `PostgresCluster.initialise()` installs the `postgresql` package with
apt (`erx_core.system_packages`) when no server is installed, as on a fresh CI machine.

Who runs it and where its files are: the server refuses to run as root. When erx runs as root (CI,
the dev machines), the cluster runs as the `postgres` OS user that Debian's package creates, and its
files cannot simply live in the state directory: that is often below a directory the postgres user
cannot traverse (/root is 0700, so is pytest's /tmp/pytest-of-root). Widening the permissions of
directories erx does not own (or adding ACLs to them) would open them to every process running as
postgres, and would need undoing; so instead `cluster_directory()` gives the cluster a directory of
its own in the postgres user's home (Debian: /var/lib/postgresql/erx/<state dir name>-<hash>),
owned by postgres, mode 0700. The state directory records where that is (its file
`postgres-cluster`), and the cluster directory records its state directory (`owner`): the cluster of
a temporary state directory that has gone (pytest's, below the system's temp dir) and that is not
running is removed the next time a cluster directory is chosen; any other is left for its owner to
remove (`PostgresCluster.remove()`, e.g. from a reset). Run as another user, erx runs the server as itself
and keeps the cluster in `<state dir>/postgres`.

Inside the cluster directory: `data/` (PGDATA) and `run/` (its unix socket and lock file, 0700, so
only the server's user and root reach the socket). The server's log is a file in the state
directory: the supervisor opens it and the server writes to the inherited descriptor.

Access: TCP on `host:port` only (127.0.0.1), and every connection, TCP or socket, authenticates
with scram-sha-256. Secrets never appear on a command line or in the server's log: initdb reads the
superuser password from a 0600 file of the postgres user's that is removed at once, and role
passwords are sent as SCRAM verifiers computed on this side (so even a failed statement's log line
holds no password). The superuser is `postgres`; each controller and agent gets a role of its own,
owning its own database, which other roles may not connect to.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from pydantic import SecretStr

from erx_core.processes import ProcessSpec, as_user
from erx_core.progress import SILENT, Progress
from erx_core.system_packages import POSTGRES_PACKAGES, ensure_packages

SERVER_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # the OS user Debian's package creates
SUPERUSER = "postgres"  # the cluster's superuser role
RECORD = "postgres-cluster"  # in the state directory: where its cluster lives
OWNER = "owner"  # in the cluster directory: its state directory


class PostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerBinaries:
    version: int
    bin_dir: Path

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"


def find_binaries(version: int | None = None, root: Path = SERVER_ROOT) -> ServerBinaries | None:
    """The installed server programs: of `version`, or of the newest version installed."""
    found = sorted((int(d.name), d / "bin") for d in root.glob("*")
                   if d.name.isdigit() and (d / "bin" / "postgres").exists() and (d / "bin" / "initdb").exists())
    if version is not None:
        found = [f for f in found if f[0] == version]
    return ServerBinaries(*found[-1]) if found else None


def server_binaries(progress: Progress = SILENT, version: int | None = None) -> ServerBinaries:
    """The server programs, apt-installing the `postgresql` package first when there are none."""
    if (binaries := find_binaries(version)) is None:
        ensure_packages(progress, POSTGRES_PACKAGES, purpose="PostgreSQL")
        binaries = find_binaries(version)
    if binaries is None:
        raise PostgresError(f"no PostgreSQL {version or ''} server in {SERVER_ROOT}/<version>/bin after installing")
    return binaries


def service_user() -> str | None:
    """Whom the server runs as: the postgres OS user when we are root (the server refuses root), else us."""
    return SERVICE_USER if os.geteuid() == 0 else None


def cluster_directory(state_dir: Path, user: str | None = None, progress: Progress = SILENT) -> Path:
    """The directory of the cluster that belongs to `state_dir` (see the module's docstring), created
    and recorded on first use. `user`: who runs the server (default: `service_user()`). The server is
    installed first if it is missing: its package creates the postgres user."""
    user = user if user is not None else service_user()
    if user is None:
        return state_dir / "postgres"
    server_binaries(progress)
    state_dir = state_dir.resolve()
    record = state_dir / RECORD
    if record.exists():
        directory = Path(record.read_text().strip())
    else:
        base = Path(pwd.getpwnam(user).pw_dir) / "erx"
        if base.exists():
            _remove_orphans(base)
        digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
        directory = base / f"{state_dir.name[:40]}-{digest}"
    _own_dir(directory.parent, user)
    _own_dir(directory, user)
    (directory / OWNER).write_text(f"{state_dir}\n")
    state_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{directory}\n")
    return directory


def _own_dir(path: Path, user: str | None) -> None:
    """`path` exists, mode 0700, owned by `user` (None: by us)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


def _running_pid(data_dir: Path) -> int | None:
    """The pid in the server's lock file, if that process is alive."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _remove_orphans(base: Path) -> None:
    """Remove the clusters of temporary state directories (pytest's) that have gone, unless running. A
    cluster of any other state directory is never removed on its own: that one may only have moved."""
    temp = Path(tempfile.gettempdir()).resolve()
    for directory in base.iterdir():
        try:
            state_dir = Path((directory / OWNER).read_text().strip())
        except (FileNotFoundError, NotADirectoryError):
            continue  # not one of ours
        if state_dir.is_relative_to(temp) and not state_dir.exists() and _running_pid(directory / "data") is None:
            shutil.rmtree(directory, ignore_errors=True)


class PostgresCluster:
    """One cluster: `initialise()` once (idempotent), run `spec()` under the Supervisor, `wait_ready()`,
    then `ensure_role()` / `ensure_database()` for each user of it and hand them `dsn()`."""

    def __init__(self, directory: Path, port: int, superuser_password: SecretStr | str, host: str = "127.0.0.1", *,
                 user: str | None = None, binaries: ServerBinaries | None = None):
        """`directory`: the cluster's own (`cluster_directory()`); `user`: the OS user that runs the
        server (default: `service_user()`); `binaries`: default, those of the cluster's version, or
        the newest."""
        self.directory, self.port, self.host = directory, port, host
        self._password = SecretStr(superuser_password) if isinstance(superuser_password, str) else superuser_password
        self.user = user if user is not None else service_user()
        self._binaries = binaries

    def __repr__(self) -> str:  # never the password
        return f"PostgresCluster({str(self.directory)!r}, port={self.port}, host={self.host!r}, user={self.user!r})"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    @property
    def version(self) -> int | None:
        """The server version the data directory was created with, None before `initialise()`."""
        try:
            return int((self.data_dir / "PG_VERSION").read_text().strip())
        except FileNotFoundError:
            return None

    def binaries(self, progress: Progress = SILENT) -> ServerBinaries:
        if self._binaries is None:
            self._binaries = server_binaries(progress, self.version)
        return self._binaries

    # -- the process ------------------------------------------------------------------------------
    def initialise(self, progress: Progress = SILENT) -> bool:
        """Create the cluster unless it exists (installing the server first if need be). True if created now."""
        binaries = self.binaries(progress)
        _own_dir(self.directory, self.user)
        _own_dir(self.socket_dir, self.user)
        identity = as_user(self.user)
        env = {**os.environ, **identity.pop("env", {}), "LC_ALL": "C"}
        reachable = subprocess.run(["test", "-w", str(self.directory), "-a", "-x", str(self.directory)],
                                   env=env, check=False, **identity)
        if reachable.returncode != 0:
            raise PostgresError(f"{self.directory} cannot be written by {self.user or 'this user'}: the cluster needs "
                                f"a directory its user can reach (see erx_core.postgres.cluster_directory)")
        if self.version is not None:
            return False
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PostgresError(f"{self.data_dir} holds something that is not a PostgreSQL cluster; remove it")
        progress(f"PostgreSQL {binaries.version}: creating the cluster in {self.data_dir} ...")
        pwfile = self.directory / "superuser-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if self.user is not None:
                os.fchown(fd, identity["user"], identity["group"])
            os.write(fd, self._password.get_secret_value().encode() + b"\n")
            os.close(fd)
            done = subprocess.run(
                [str(binaries.initdb), "--pgdata", str(self.data_dir), "--username", SUPERUSER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                 "--data-checksums", "--no-instructions"],
                cwd=self.directory, env=env, capture_output=True, text=True, check=False, **identity)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise PostgresError(f"initdb failed (exit {done.returncode}):\n{tail}")
        return True

    def spec(self, log_file: Path, name: str = "postgres") -> ProcessSpec:
        """The server as a supervised process (after `initialise()`). Nothing secret is in it."""
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": "off",  # stderr: the log file the supervisor opened
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        argv = [str(self.binaries().postgres), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        # Stopped with SIGINT, a "fast" shutdown: clients are disconnected, then a checkpoint (SIGTERM would wait
        # for every client to leave). The server's children run in sessions of their own: it stops them itself.
        return ProcessSpec(name=name, argv=argv, env={"LC_ALL": "C"}, cwd=self.directory, log_file=log_file,
                           ports=[self.port], user=self.user, stop_timeout_s=30, stop_signal=signal.SIGINT)

    async def wait_ready(self, timeout_s: float = 60, alive: Callable[[], bool] | None = None) -> None:
        """Return once the server accepts the superuser's connections; TimeoutError after `timeout_s`.
        `alive` says whether the server's process still runs (e.g. `lambda: supervisor.is_running(name)`):
        once it is gone, PostgresError at once (its log says why)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if alive is not None and not alive():
                raise PostgresError(f"PostgreSQL on {self.host}:{self.port} exited while starting (see its log)")
            try:
                conn = await psycopg.AsyncConnection.connect(**self._conninfo("postgres"), connect_timeout=5)
                await conn.close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"PostgreSQL on {self.host}:{self.port} not ready after {timeout_s:.0f} s: "
                                       f"{str(exc).strip()[:300]} (see its log)") from None
            await asyncio.sleep(0.1)

    def remove(self) -> None:
        """Delete the (stopped) cluster's files."""
        if (pid := _running_pid(self.data_dir)) is not None:
            raise PostgresError(f"the cluster in {self.data_dir} is still running (pid {pid}); stop it first")
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- roles and databases ----------------------------------------------------------------------
    def _conninfo(self, database: str) -> dict[str, str | int]:
        return {"host": self.host, "port": self.port, "user": SUPERUSER, "dbname": database,
                "password": self._password.get_secret_value()}

    def admin(self, database: str = "postgres") -> psycopg.Connection:
        """A superuser connection (autocommit), for `with cluster.admin() as db: ...`."""
        return psycopg.connect(**self._conninfo(database), autocommit=True, connect_timeout=10)

    def ensure_role(self, name: str, password: SecretStr | str, *, createdb: bool = False) -> None:
        """A login role `name` with `password` (created, or its password set anew). `createdb`: it may create
        databases (an ACA-Py agent's does: askar creates its wallet's database on first start)."""
        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        with self.admin() as db:
            # the SCRAM verifier is computed here: the password itself never reaches the server
            verifier = db.pgconn.encrypt_password(secret.encode(), name.encode(), b"scram-sha-256").decode()
            exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None
            db.execute(sql.SQL("{} ROLE {} LOGIN {} PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(name),
                sql.SQL("CREATEDB" if createdb else "NOCREATEDB"), sql.Literal(verifier)))

    def ensure_database(self, name: str, owner: str) -> None:
        """A database `name` owned by `owner`, which no other (non-superuser) role may connect to."""
        with self.admin() as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                db.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
                db.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
            else:
                db.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))

    def dsn(self, database: str, user: str, password: SecretStr | str) -> str:
        """`postgresql://user:password@host:port/database`, for `erx_core.store.Store`. Holds the password."""
        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        return (f"postgresql://{quote(user, safe='')}:{quote(secret, safe='')}@{self.host}:{self.port}/"
                f"{quote(database, safe='')}")
