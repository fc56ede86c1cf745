"""Create a local Indy pool folder and describe the validator processes that serve it.

The work is done by ``node_scripts/init_pool.py`` and ``node_scripts/start_node.py`` under the
node venv's Python 3.8; this module only builds their command lines. Starting, watching and
stopping the processes is left to the caller (a supervisor starts each ``NodeProcess`` and
stops it with SIGTERM, after which a restart resumes on the same ledgers).

Pool folder layout: ``indy_config.py`` and ``pool.json`` (what init_pool made), the genesis copy
``pool_transactions_genesis``, and ``<network>/`` with genesis files, ``keys/`` and ``data/<node>/``
(RocksDB: about 50 MB per node with the 4 MB write buffers init_pool.py configures).
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .node_venv import NODE_SCRIPTS_DIR, clean_env, venv_python

MANIFEST_FILE = "pool.json"
GENESIS_FILE = "pool_transactions_genesis"
DEV_TRUSTEE_SEED = "000000000000000000000000Trustee1"


class PoolError(RuntimeError):
    """A pool folder could not be created or read."""


class PoolNode(BaseModel):
    name: str
    ip: str
    node_port: int
    client_port: int


class PoolManifest(BaseModel):
    """``<pool_dir>/pool.json``, written last by init_pool.py."""

    network_name: str
    nodes: list[PoolNode]
    trustee_did: str
    steward_dids: list[str]
    genesis_file: str


class NodeProcess(BaseModel):
    """One validator: run ``argv`` in ``cwd`` with ``env``; stop it with SIGTERM."""

    model_config = ConfigDict(frozen=True)

    name: str
    argv: list[str]
    env: dict[str, str]  # to add to the inherited environment (nothing needed today)
    cwd: Path
    log_file: Path  # where to send its stdout+stderr: the node logs to stdout only
    ports: list[int]  # [node port, client port], both bound on the node's IP


def init_pool(
    pool_dir: Path,
    node_venv: Path,
    *,
    node_ports: Sequence[int],
    client_ports: Sequence[int],
    network_name: str = "erx",
    trustee_seed: str = DEV_TRUSTEE_SEED,
    steward_seeds: Sequence[str] | None = None,
    host: str = "127.0.0.1",
) -> Path:
    """Create node keys, BLS keys and genesis files for ``len(node_ports)`` validators.

    Seeds are 32 characters; the defaults (trustee here, ``000…StewardN`` for stewards) are
    indy's public development seeds. Idempotent: a folder that already holds this pool (same
    network name, nodes, ports and host) is left as it is. Returns the pool genesis file clients
    need, ``<pool_dir>/pool_transactions_genesis``. Raises PoolError if the folder holds another
    pool or anything that is not a pool.
    """
    pool_dir = Path(pool_dir).resolve()
    argv = [
        str(venv_python(node_venv)),
        str(NODE_SCRIPTS_DIR / "init_pool.py"),
        "--dir",
        str(pool_dir),
        "--nodes",
        str(len(node_ports)),
        "--node-ports",
        ",".join(map(str, node_ports)),
        "--client-ports",
        ",".join(map(str, client_ports)),
        "--network-name",
        network_name,
        "--host",
        host,
        "--trustee-seed",
        trustee_seed,
    ]
    if steward_seeds:
        argv += ["--steward-seeds", ",".join(steward_seeds)]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise PoolError(f"init_pool.py failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return pool_dir / GENESIS_FILE


def read_manifest(pool_dir: Path) -> PoolManifest:
    path = Path(pool_dir) / MANIFEST_FILE
    try:
        return PoolManifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise PoolError(f"{pool_dir} holds no pool (no {MANIFEST_FILE}); run init_pool first") from None


def node_processes(pool_dir: Path, node_venv: Path) -> list[NodeProcess]:
    """The validator processes of the pool in ``pool_dir``, in node order."""
    pool_dir = Path(pool_dir).resolve()
    manifest = read_manifest(pool_dir)
    return [
        NodeProcess(
            name=node.name,
            # -E -s: ignore PYTHONPATH & co. and the user site, whatever environment the node
            # inherits (a 3.13 path would break the 3.8 interpreter); -u: unbuffered log lines.
            argv=[
                str(venv_python(node_venv)),
                "-E",
                "-s",
                "-u",
                str(NODE_SCRIPTS_DIR / "start_node.py"),
                "--dir",
                str(pool_dir),
                "--name",
                node.name,
            ],
            env={},
            cwd=pool_dir,
            log_file=pool_dir / "log" / f"{node.name}.log",
            ports=[node.node_port, node.client_port],
        )
        for node in manifest.nodes
    ]


def pick_free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
