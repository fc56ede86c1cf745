"""Debian packages the tests need beyond Python and npm: Chromium for the browser tests, zbarimg to
read the pages' QR codes, pdftoppm to render printed PDFs for it, and the PostgreSQL server
(`erx_core.postgres`). `erx test` installs them when missing (CI starts on a fresh machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from erx_core.progress import Progress

# package -> the program the tests run from it (Playwright drives /usr/bin/chromium, never its own download)
BROWSER_TEST_PACKAGES = {"chromium": Path("/usr/bin/chromium"), "zbar-tools": Path("/usr/bin/zbarimg"),
                         # pdftoppm renders a printed paper prescription to read its QR code back
                         "poppler-utils": Path("/usr/bin/pdftoppm"),
                         # the paper prescription's names in any script (erx_core.documents; else Latin-1 only)
                         "fonts-dejavu-core": Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")}
# Debian keeps each server version's programs apart: a `*` in a program's path matches any version
POSTGRES_PACKAGES = {"postgresql": Path("/usr/lib/postgresql/*/bin/postgres")}


class PackageInstallError(RuntimeError):
    pass


def _installed(program: Path) -> bool:
    if "*" in str(program):
        return any(Path(program.anchor).glob(str(program.relative_to(program.anchor))))
    return program.exists()


def missing_packages(wanted: dict[str, Path] = BROWSER_TEST_PACKAGES) -> list[str]:
    return [pkg for pkg, program in wanted.items() if not _installed(program)]


def ensure_packages(progress: Progress, wanted: dict[str, Path] = BROWSER_TEST_PACKAGES,
                    purpose: str = "browser tests") -> list[str]:
    """apt-get install whatever of `wanted` is missing (idempotent); returns what was installed.
    `purpose` says in the progress lines what the packages are for."""
    missing = missing_packages(wanted)
    if not missing:
        return []
    hint = f"install them yourself: apt-get update && apt-get install -y {' '.join(missing)}"
    if shutil.which("apt-get") is None:
        raise PackageInstallError(f"{', '.join(missing)} missing and this is not a Debian system: {hint}")
    if os.geteuid() != 0:
        raise PackageInstallError(f"{', '.join(missing)} missing and installing needs root: {hint}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step, argv in (("updating the package lists", ["apt-get", "update", "-q"]),
                       (f"installing {', '.join(missing)}", ["apt-get", "install", "-y", "-q", *missing])):
        progress(f"{purpose}: {step} (apt-get) ...")
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise PackageInstallError(f"apt-get failed while {step} (exit {done.returncode}):\n{tail}\n{hint}")
    if still := missing_packages(wanted):
        raise PackageInstallError(f"apt-get finished but {', '.join(still)} is still missing: {hint}")
    progress(f"{purpose}: installed {', '.join(missing)}")
    return missing
