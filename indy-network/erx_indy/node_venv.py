"""Build the Python 3.8 venv that indy-node validators run in.

indy-node 1.13.2 targets Python 3.8; the project's own venv is 3.13, so the validators get a venv
of their own, installed from ``indy-network/node-requirements.txt`` (PyPI plus two local shims).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

INDY_NETWORK_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = INDY_NETWORK_DIR / "node-requirements.txt"
SHIMS_DIR = INDY_NETWORK_DIR / "shims"
NODE_SCRIPTS_DIR = INDY_NETWORK_DIR / "node_scripts"

NODE_PYTHON_VERSION = "3.8.18"
MARKER_FILE = ".erx-node-venv"
# With `wheel` present, pip 23.0 (what Python 3.8.18's venv ships) builds wheels for the
# sdists and caches them, so a second install skips the C builds.
WHEEL_PIN = "wheel==0.45.1"
# Build leftovers that must not enter the hash nor the install copy.
_IGNORED = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")
# Imports that fail if a shim or a pin is wrong, checked before the venv is marked ready.
_SMOKE_TEST = (
    "import indy_node, plenum, rocksdb, zmq;"
    "from zmq.auth.thread import _inherit_docstrings;"
    "from ursa.bls import Bls, BlsEntity, Generator, SignKey, VerKey, Signature,"
    " MultiSignature, ProofOfPossession;"
    "from ursa.indy_error import IndyCryptoError;"
    "k = SignKey.new(b'0' * 32); VerKey.new(Generator.new(), k)"
)
# pip lines worth showing while the (minutes-long) install runs.
_PROGRESS_PREFIXES = ("Collecting", "Building wheel", "Successfully installed")


class NodeVenvError(RuntimeError):
    """The node venv could not be built."""


def default_base_python() -> Path:
    """Python 3.8 to build the node venv from: $ERX_NODE_PYTHON, else pyenv's 3.8.18."""
    if explicit := os.environ.get("ERX_NODE_PYTHON"):
        return Path(explicit)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    return pyenv_root / "versions" / NODE_PYTHON_VERSION / "bin" / "python"


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir).absolute() / "bin" / "python"


def clean_env() -> dict[str, str]:
    """Environment for node-venv processes: nothing of the calling interpreter leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def requirements_digest(python_version: str) -> str:
    """Hash of everything that decides the venv's content."""
    h = hashlib.sha256()
    h.update(f"python {python_version}\n{WHEEL_PIN}\n".encode())
    h.update(REQUIREMENTS.read_bytes())
    for path in sorted(_shim_files()):
        h.update(str(path.relative_to(SHIMS_DIR)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def ensure_node_venv(venv_dir: Path, base_python: Path, log: Callable[[str], None] = print) -> None:
    """Create or update the node venv; a no-op when it already matches the requirements.

    A marker file in the venv holds the hash of node-requirements.txt, the shims and the Python
    version; anything else (no venv, changed pins, an install that died half-way) rebuilds it
    from scratch. Raises NodeVenvError with pip's output tail when the install fails.
    """
    venv_dir = Path(venv_dir).absolute()  # pip runs in a temp dir
    base_python = Path(base_python)
    version = _python_version(base_python)
    digest = requirements_digest(version)
    marker = venv_dir / MARKER_FILE
    python = venv_python(venv_dir)
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return

    started = time.monotonic()
    log(f"node venv: building {venv_dir} from Python {version} (a few minutes on a cold pip cache)")
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _run([str(base_python), "-m", "venv", "--clear", str(venv_dir)], "create the venv")

    # Install from a copy: pip builds local projects in place and would leave build/ and
    # *.egg-info in the source tree (and reuse stale ones next time).
    with tempfile.TemporaryDirectory(prefix="erx-node-req-") as tmp:
        shutil.copy2(REQUIREMENTS, Path(tmp) / REQUIREMENTS.name)
        shutil.copytree(SHIMS_DIR, Path(tmp) / SHIMS_DIR.name, ignore=_IGNORED)
        pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
        _run(pip + [WHEEL_PIN], "install wheel")
        _pip_with_progress(pip + ["-r", REQUIREMENTS.name], Path(tmp), venv_dir, log)

    _run([str(python), "-m", "pip", "check"], "pip check")
    _run([str(python), "-c", _SMOKE_TEST], "import indy-node in the new venv")
    marker.write_text(digest + "\n")
    log(f"node venv: ready in {time.monotonic() - started:.0f} s")


def _shim_files() -> list[Path]:
    ignored_dirs = {"build", "__pycache__"}
    return [
        p
        for p in SHIMS_DIR.rglob("*")
        if p.is_file()
        and p.suffix != ".pyc"
        and not any(part in ignored_dirs or part.endswith(".egg-info") for part in p.parts)
    ]


def _python_version(base_python: Path) -> str:
    hint = (
        f"install Python 3.8 via pyenv (`pyenv install {NODE_PYTHON_VERSION}`) or point "
        "ERX_NODE_PYTHON at a Python 3.8 interpreter"
    )
    if not base_python.exists():
        raise NodeVenvError(f"Python 3.8 not found at {base_python}: {hint}")
    out = _run(
        [str(base_python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        "query the base Python's version",
    )
    version = out.strip()
    if not version.startswith("3.8."):
        raise NodeVenvError(f"{base_python} is Python {version}; indy-node 1.13 needs 3.8: {hint}")
    return version


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise NodeVenvError(f"could not {what} (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _pip_with_progress(argv: list[str], cwd: Path, venv_dir: Path, log: Callable[[str], None]) -> None:
    """Run pip, echo its milestone lines, keep its full output in <venv>/pip-install.log."""
    log_path = venv_dir / "pip-install.log"
    with (
        open(log_path, "w") as log_file,
        subprocess.Popen(
            argv, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            if line.startswith(_PROGRESS_PREFIXES):
                log(f"node venv: {line.rstrip()}")
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise NodeVenvError(f"pip install failed (exit {proc.returncode}), full log {log_path}:\n{tail}")
