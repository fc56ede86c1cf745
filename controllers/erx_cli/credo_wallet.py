"""A Credo-TS 0.5.19 wallet (the agent stack BC Wallet is built on) as a patient: install, start, drive.

The agent itself is `agents/credo-wallet/wallet.js` (Node.js, plain ESM); this module

- installs what it needs, idempotently (`ensure_credo_wallet`): its npm packages from the lock file, and
  the native libraries the npm packages would download from GitHub at install time, taken instead from
  the PyPI wheels that carry the very same builds (askar, anoncreds, indy-vdr);
- describes its process for the project's process manager (`CredoWallet.spec`), so it is started,
  recorded and stopped by pid like every other component, and waits until it answers;
- talks to its small JSON control API (`CredoWalletClient`, answers as pydantic models).

Installed files are not state: node_modules sits beside the agent's package.json (git-ignored), the
native libraries in `<venvs>/credo-native` (by default `.erx/venv/credo-native`), both kept by
`erx reset`. A marker with a fingerprint of what was installed makes a warm call a few file reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, Field, SecretStr, TypeAdapter

from erx_core.processes import ProcessSpec, Supervisor, free_port
from erx_core.secrets import SecretStore
from erx_core.settings import REPO_ROOT

if TYPE_CHECKING:
    from erx_cli.system import LocalSystem

AGENT_DIR = REPO_ROOT / "agents" / "credo-wallet"
SCRIPT = AGENT_DIR / "wallet.js"
CREDO_VERSION = "0.5.19"


class NativeLibrary(BaseModel):
    """A native library of the Node wrappers, and the PyPI wheel that ships the same build."""

    pypi: str  # distribution name on PyPI
    version: str  # the version the npm wrapper's package.json names as its binary
    package_dir: str  # folder inside the wheel
    file: str  # the shared object in it
    env: str  # the wrapper's environment variable: a directory holding `file`


# The npm wrappers' own pins: askar-nodejs 0.4.3 -> askar v0.4.6, anoncreds-nodejs 0.3.4 -> anoncreds
# v0.2.3, indy-vdr-nodejs 0.2.2 -> indy-vdr v0.4.1 ("binary" in their package.json).
NATIVE_LIBRARIES = [
    NativeLibrary(pypi="aries-askar", version="0.4.6", package_dir="aries_askar", file="libaries_askar.so",
                  env="LIB_ASKAR_PATH"),
    NativeLibrary(pypi="anoncreds", version="0.2.3", package_dir="anoncreds", file="libanoncreds.so",
                  env="LIB_ANONCREDS_PATH"),
    NativeLibrary(pypi="indy-vdr", version="0.4.1", package_dir="indy_vdr", file="libindy_vdr.so",
                  env="LIB_INDY_VDR_PATH"),
]
# ffi-napi and ref-napi are compiled here (npm ci runs with --ignore-scripts: one of Credo's dependencies
# has a pnpm-only preinstall script, and the wrappers' install scripts would download from GitHub).
COMPILED_PACKAGES = ["@2060.io/ref-napi", "@2060.io/ffi-napi"]
MARKER = ".erx-installed"


class CredoSetupError(RuntimeError):
    """The wallet could not be installed or started; the message says what to look at."""


class CredoInstall(BaseModel):
    """Where an installed Credo wallet is: the node binary, the agent script, the native libraries."""

    node: Path
    script: Path = SCRIPT
    native_dir: Path

    def env(self) -> dict[str, str]:
        return {lib.env: str(self.native_dir / lib.package_dir) for lib in NATIVE_LIBRARIES}


def default_native_dir() -> Path:
    from erx_core.settings import load_settings

    return load_settings().venvs / "credo-native"


def _node() -> Path:
    node = shutil.which("node")
    if node is None:
        raise CredoSetupError("node not found: install Node.js 20 (apt-get install nodejs npm)")
    return Path(node)


def _node_version(node: Path) -> str:
    return subprocess.run([str(node), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def npm_fingerprint(node: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((AGENT_DIR / name).read_bytes())
    digest.update(f"node {_node_version(node)} {' '.join(COMPILED_PACKAGES)}".encode())
    return digest.hexdigest()[:16]


def native_fingerprint() -> str:
    pins = json.dumps([lib.model_dump() for lib in NATIVE_LIBRARIES], sort_keys=True)
    return hashlib.sha256(f"{pins} {sys.platform}".encode()).hexdigest()[:16]


def _marked(marker: Path, want: str) -> bool:
    try:
        return marker.read_text().strip() == want
    except FileNotFoundError:
        return False


def _run(argv: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        out.flush()
        rc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            check=False).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise CredoSetupError(f"{what} failed (exit {rc}); full log {log}:\n{tail}")


def _install_npm(log: Path, progress: Callable[[str], None]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise CredoSetupError("npm not found: install Node.js 20 (apt-get install nodejs npm)")
    progress(f"credo wallet: npm ci of Credo-TS {CREDO_VERSION} in {AGENT_DIR} (about a minute on a cold cache)")
    _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], AGENT_DIR, log, "npm ci")
    _run([npm, "rebuild", *COMPILED_PACKAGES], AGENT_DIR, log, "npm rebuild (ffi-napi, ref-napi)")


def _install_native(native_dir: Path, log: Path, progress: Callable[[str], None]) -> None:
    progress(f"credo wallet: native libraries from PyPI wheels into {native_dir}")
    with tempfile.TemporaryDirectory(prefix="erx-credo-wheels-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "-d", tmp, *(f"{lib.pypi}=={lib.version}" for lib in NATIVE_LIBRARIES)],
             AGENT_DIR, log, "pip download of the native libraries")
        wheels = list(Path(tmp).glob("*.whl"))
        for lib in NATIVE_LIBRARIES:
            prefix = lib.pypi.replace("-", "_") + f"-{lib.version}-"
            wheel = next((w for w in wheels if w.name.startswith(prefix)), None)
            if wheel is None:
                got = [w.name for w in wheels]
                raise CredoSetupError(f"pip did not download {lib.pypi}=={lib.version} (got {got})")
            member = f"{lib.package_dir}/{lib.file}"
            target = native_dir / lib.package_dir / lib.file
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(f"{target}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            Path(f"{target}.part").replace(target)


_LOAD_CHECK = """
const { createRequire } = require('node:module')
const r = createRequire(process.argv[1] + '/package.json')
const { askar } = r('@openwallet-foundation/askar-nodejs')
const { anoncreds } = r('@hyperledger/anoncreds-nodejs')
const { indyVdr } = r('@hyperledger/indy-vdr-nodejs')
console.log(JSON.stringify({ askar: askar.version(), anoncreds: anoncreds.version(), 'indy-vdr': indyVdr.version() }))
"""


def loaded_versions(install: CredoInstall) -> dict[str, str]:
    """The versions the Node wrappers report once they loaded the native libraries (a real load)."""
    done = subprocess.run([str(install.node), "-e", _LOAD_CHECK, str(AGENT_DIR)], capture_output=True, text=True,
                          env={**os.environ, **install.env()}, timeout=60, check=False)
    if done.returncode != 0:
        raise CredoSetupError(f"the Credo wallet's native libraries do not load:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_credo_wallet(native_dir: Path | None = None, progress: Callable[[str], None] = print) -> CredoInstall:
    """Install the Credo wallet unless the markers say this lock and these pins are installed.

    Cold: `npm ci --ignore-scripts` from agents/credo-wallet/package-lock.json, `npm rebuild` of ffi-napi
    and ref-napi (compiled, ~10 s), `pip download` of the three wheels carrying the native libraries
    (~2 s) and a load check. Warm: a few file reads. Serialised between processes by a lock file.
    """
    native_dir = (native_dir or default_native_dir()).absolute()
    native_dir.mkdir(parents=True, exist_ok=True)
    node = _node()
    install = CredoInstall(node=node, native_dir=native_dir)
    npm_marker, native_marker = AGENT_DIR / "node_modules" / MARKER, native_dir / MARKER
    log = native_dir / "install.log"
    with open(native_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        npm_want, native_want = npm_fingerprint(node), native_fingerprint()
        npm_ok, native_ok = _marked(npm_marker, npm_want), _marked(native_marker, native_want)
        if npm_ok and native_ok:
            return install
        started = time.monotonic()
        if not npm_ok:
            npm_marker.unlink(missing_ok=True)
            _install_npm(log, progress)
        if not native_ok:
            native_marker.unlink(missing_ok=True)
            _install_native(native_dir, log, progress)
        versions = loaded_versions(install)
        wanted = {"askar": NATIVE_LIBRARIES[0].version, "anoncreds": NATIVE_LIBRARIES[1].version,
                  "indy-vdr": NATIVE_LIBRARIES[2].version}
        if versions != wanted:
            raise CredoSetupError(f"the native libraries loaded are {versions}, expected {wanted}")
        npm_marker.write_text(npm_want + "\n")
        native_marker.write_text(native_want + "\n")
        progress(f"credo wallet: installed in {time.monotonic() - started:.0f} s ({versions})")
        return install


# -- the process --------------------------------------------------------------------------------------
class CredoWallet(BaseModel):
    """One Credo wallet process: its ports, wallet, ledger and log. `spec()` is what the supervisor runs."""

    name: str
    label: str
    host: str = "127.0.0.1"
    control_port: int
    inbound_port: int
    data_dir: Path
    genesis_file: Path
    indy_namespace: str  # the pool's network name, as the credential definitions' issuers use it
    wallet_key: SecretStr
    log_file: Path
    log_level: str = "info"

    @classmethod
    def for_network(cls, network: LocalSystem, name: str, label: str | None = None, **overrides: Any) -> CredoWallet:
        """A wallet on `network`'s pool, on free ports; its data, wallet key and log are named
        `credo-<name>`, in a home of its own under the system's organisations."""
        host, process = network.settings.host, f"credo-{name}"
        home = network.paths.org_home(process)  # a wallet deployment of its own, beside the organisations'
        secrets = SecretStore(home / "secrets.json")
        control_port = free_port(host)
        inbound_port = free_port(host)
        while inbound_port == control_port:
            inbound_port = free_port(host)
        return cls(name=name, label=label or name, host=host, control_port=control_port, inbound_port=inbound_port,
                   data_dir=home / "wallet", genesis_file=network.genesis_file,
                   indy_namespace=network.settings.pool.network_name, wallet_key=secrets.wallet_key(process),
                   log_file=home / "logs" / f"{process}.log", **overrides)

    @property
    def process_name(self) -> str:
        return f"credo-{self.name}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    def spec(self, install: CredoInstall) -> ProcessSpec:
        argv = [str(install.node), str(install.script), "--host", self.host,
                "--control-port", str(self.control_port), "--inbound-port", str(self.inbound_port),
                "--label", self.label, "--data-dir", str(self.data_dir), "--genesis-file", str(self.genesis_file),
                "--indy-namespace", self.indy_namespace, "--log-level", self.log_level]
        # the wallet key goes through the environment, never on the command line (`ps` shows argv)
        env = {**install.env(), "CREDO_WALLET_KEY": self.wallet_key.get_secret_value()}
        return ProcessSpec(name=self.process_name, argv=argv, env=env, cwd=AGENT_DIR, log_file=self.log_file,
                           ports=[self.control_port, self.inbound_port], stop_timeout_s=10)

    async def start(self, supervisor: Supervisor, install: CredoInstall, timeout_s: float = 60) -> CredoWalletClient:
        """Start the process (unless it runs) and wait until its control API answers healthy."""
        spec = self.spec(install)
        supervisor.start(spec)
        client = CredoWalletClient(self.control_url)
        deadline = time.monotonic() + timeout_s
        while True:
            if not supervisor.is_running(spec.name):
                await client.close()
                raise CredoSetupError(f"{spec.name} exited while starting; last log lines ({self.log_file}):\n"
                                      + self.log_tail())
            try:
                if (await client.health()).ok:
                    return client
            except (TimeoutError, aiohttp.ClientError, CredoWalletError):
                pass
            if time.monotonic() > deadline:
                await client.close()
                supervisor.stop(spec.name)
                raise CredoSetupError(f"{spec.name} not healthy after {timeout_s:.0f} s; see {self.log_file}:\n"
                                      + self.log_tail())
            await asyncio.sleep(0.25)

    def stop(self, supervisor: Supervisor) -> bool:
        return supervisor.stop(self.process_name, timeout_s=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# -- the control API ------------------------------------------------------------------------------
Decision = Literal["accept", "decline"]


class WalletMode(BaseModel):
    offers: Decision
    proofs: Decision


class WalletHealth(BaseModel):
    ok: bool
    label: str
    inbound_url: str
    mode: WalletMode


class CredoConnection(BaseModel):
    id: str
    state: str  # Credo's DID Exchange states: ... request-sent, response-received, completed
    role: str
    their_label: str | None = None
    did: str | None = None
    their_did: str | None = None
    out_of_band_id: str | None = None
    protocol: str | None = None
    created_at: dt.datetime | None = None

    @property
    def completed(self) -> bool:
        return self.state == "completed"


class InvitationReceived(BaseModel):
    out_of_band_id: str
    out_of_band_state: str
    connection: CredoConnection | None = None  # None for a connectionless request


class WalletAnswer(BaseModel):
    """What the wallet did about an offer or a request (its own decision, recorded on the record)."""

    action: Literal["accepted", "declined", "presented", "no_matching_credential"]
    problem_report: str | None = None  # the description of the problem report it sent
    credential_ids: list[str] = Field(default_factory=list)  # what it presented from
    at: dt.datetime | None = None


class RevocationNotice(BaseModel):
    received_at: dt.datetime | None = None
    comment: str | None = None


class CredoCredential(BaseModel):
    id: str  # the credential exchange record
    state: str  # offer-received, request-sent, credential-received, done, declined, abandoned
    thread_id: str
    connection_id: str | None = None
    created_at: dt.datetime | None = None
    error_message: str | None = None
    credential_id: str | None = None  # the stored AnonCreds credential
    cred_def_id: str | None = None
    schema_id: str | None = None
    rev_reg_id: str | None = None
    cred_rev_id: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    revoked: bool = False  # a revocation notification arrived for it
    revocation_notification: RevocationNotice | None = None
    answer: WalletAnswer | None = None


class CredoProof(BaseModel):
    id: str
    state: str  # request-received, presentation-sent, done, declined, abandoned
    thread_id: str
    connection_id: str | None = None
    created_at: dt.datetime | None = None
    error_message: str | None = None  # a problem report the verifier sent
    answer: WalletAnswer | None = None


class CredoWalletError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any):
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status, self.body = status, body


T = TypeVar("T")


class CredoWalletClient:
    """Async client of the wallet's control API."""

    def __init__(self, base_url: str, timeout_s: float = 90.0):
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> CredoWalletClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _request(self, method: str, path: str, answer: type[T] | Any, body: Any = None) -> T:
        async with self._session.request(method, self.base_url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise CredoWalletError(method, path, resp.status, data)
        return TypeAdapter(answer).validate_python(data)

    async def health(self) -> WalletHealth:
        return await self._request("GET", "/health", WalletHealth)

    async def receive_invitation(self, url: str, timeout_s: float = 20) -> InvitationReceived:
        """Open an invitation (long `?oob=` URL or short link); for a connection, waits until it completes."""
        return await self._request("POST", "/invitations", InvitationReceived, {"url": url, "timeout_s": timeout_s})

    async def connections(self) -> list[CredoConnection]:
        return await self._request("GET", "/connections", list[CredoConnection])

    async def credentials(self) -> list[CredoCredential]:
        return await self._request("GET", "/credentials", list[CredoCredential])

    async def proofs(self) -> list[CredoProof]:
        return await self._request("GET", "/proofs", list[CredoProof])

    async def mode(self) -> WalletMode:
        return await self._request("GET", "/mode", WalletMode)

    async def set_mode(self, offers: Decision | None = None, proofs: Decision | None = None) -> WalletMode:
        body = {k: v for k, v in (("offers", offers), ("proofs", proofs)) if v is not None}
        return await self._request("POST", "/mode", WalletMode, body)

    # -- waiting for what the wallet does on its own -----------------------------------------------
    @staticmethod
    async def until(fetch: Callable[[], Awaitable[list[T]]], predicate: Callable[[T], bool],
                    timeout_s: float = 30, interval_s: float = 0.25) -> T | None:
        """The first item `fetch()` lists that satisfies `predicate`, polling up to `timeout_s`; else None."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((item for item in await fetch() if predicate(item)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            await asyncio.sleep(interval_s)

    async def wait_credential(self, predicate: Callable[[CredoCredential], bool],
                              timeout_s: float = 30) -> CredoCredential | None:
        return await self.until(self.credentials, predicate, timeout_s)

    async def wait_proof(self, predicate: Callable[[CredoProof], bool], timeout_s: float = 30) -> CredoProof | None:
        return await self.until(self.proofs, predicate, timeout_s)
