"""`erx test` installs the browser tests' Debian packages when missing, and says so when it cannot."""

from pathlib import Path

import pytest

from erx_core import system_packages
from erx_core.progress import SILENT
from erx_core.system_packages import PackageInstallError, ensure_packages


def test_nothing_to_do_when_the_programs_are_there(tmp_path: Path):
    program = tmp_path / "zbarimg"
    program.touch()
    assert ensure_packages(SILENT, {"zbar-tools": program}) == []


def test_missing_packages_without_apt_or_root_fail_with_what_to_do(tmp_path: Path, monkeypatch):
    wanted = {"zbar-tools": tmp_path / "missing"}
    monkeypatch.setattr(system_packages.shutil, "which", lambda _: None)
    with pytest.raises(PackageInstallError, match="apt-get install -y zbar-tools"):
        ensure_packages(SILENT, wanted)
    monkeypatch.setattr(system_packages.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(system_packages.os, "geteuid", lambda: 1000)
    with pytest.raises(PackageInstallError, match="needs root"):
        ensure_packages(SILENT, wanted)


def test_a_failing_apt_get_is_reported_with_its_output(tmp_path: Path, monkeypatch):
    calls = []

    def run(argv, **_):
        calls.append(argv)
        return type("Done", (), {"returncode": 100, "stdout": "", "stderr": "E: Unable to locate package"})()

    monkeypatch.setattr(system_packages.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(system_packages.os, "geteuid", lambda: 0)
    monkeypatch.setattr(system_packages.subprocess, "run", run)
    with pytest.raises(PackageInstallError, match="Unable to locate package"):
        ensure_packages(SILENT, {"zbar-tools": tmp_path / "missing"})
    assert calls == [["apt-get", "update", "-q"]]
