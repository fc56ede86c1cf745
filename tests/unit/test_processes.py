"""The supervisor starts detached processes, refuses taken ports, and stops only what it started."""

import socket
import sys
import time

import pytest

from erx_core.processes import PortInUse, ProcessSpec, Supervisor, free_port


def sleeper(tmp_path, name="sleeper", ports=()):
    return ProcessSpec(name=name, argv=[sys.executable, "-c", "import time; time.sleep(60)"],
                       log_file=tmp_path / f"{name}.log", ports=list(ports))


def test_start_is_idempotent_and_stop_ends_the_process(tmp_path):
    sup = Supervisor(tmp_path / "run")
    rec = sup.start(sleeper(tmp_path))
    assert sup.start(sleeper(tmp_path)).pid == rec.pid
    assert sup.is_running("sleeper")
    assert sup.stop("sleeper", timeout_s=5)
    assert not sup.is_running("sleeper")
    assert not (tmp_path / "run" / "sleeper.json").exists()
    assert sup.stop("sleeper") is False


def test_taken_port_fails_fast_with_a_hint(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port}.*configure another port"):
            Supervisor(tmp_path / "run").start(sleeper(tmp_path, ports=[port]))


def test_a_recycled_pid_is_never_signalled(tmp_path):
    """A pid file whose process is gone (or whose pid now belongs to someone else) is treated as stale."""
    sup = Supervisor(tmp_path / "run")
    rec = sup.start(sleeper(tmp_path))
    stale = rec.model_copy(update={"start_ticks": rec.start_ticks + 1})
    (tmp_path / "run" / "sleeper.json").write_text(stale.model_dump_json())
    assert sup.record("sleeper") is None
    assert sup.stop("sleeper") is False
    # the real process was not touched
    assert open(f"/proc/{rec.pid}/stat").read()
    Supervisor._signal(rec.pid, 9)


def test_process_that_crashes_is_reported_gone(tmp_path):
    sup = Supervisor(tmp_path / "run")
    spec = ProcessSpec(name="crasher", argv=[sys.executable, "-c", "raise SystemExit(3)"],
                       log_file=tmp_path / "crasher.log")
    sup.start(spec)
    deadline = time.monotonic() + 5
    while sup.is_running("crasher") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sup.is_running("crasher")


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
