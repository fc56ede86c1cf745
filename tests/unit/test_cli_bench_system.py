"""A bench brings the system up and, if it was not running before, stops it afterwards, also when the
bench fails or is interrupted; a system someone else started stays up."""

from __future__ import annotations

import asyncio

import pytest

from erx_cli.cli import on_system


class FakeSystem:
    def __init__(self, running: list[str]):
        self.supervisor = self
        self._running = list(running)
        self.calls: list[str] = []

    def running(self):
        return list(self._running)

    async def up(self):
        self.calls.append("up")
        self._running = ["chain", "agent-doctor"]

    def down(self):
        self.calls.append("down")
        self._running = []
        return []


async def test_a_system_the_bench_started_is_stopped_after_it():
    net = FakeSystem(running=[])

    async def work():
        assert net.calls == ["up"]
        return {"bench": "agents"}

    assert await on_system(net, work) == {"bench": "agents"}
    assert net.calls == ["up", "down"] and net.running() == []


@pytest.mark.parametrize("ending", [RuntimeError("agent refused"), asyncio.CancelledError(), KeyboardInterrupt()])
async def test_it_is_stopped_also_when_the_bench_fails_or_is_interrupted(ending):
    net = FakeSystem(running=[])

    async def work():
        raise ending

    with pytest.raises(type(ending)):
        await on_system(net, work)
    assert net.calls == ["up", "down"]


async def test_a_system_that_was_already_running_stays_up():
    net = FakeSystem(running=["chain"])

    async def work():
        return {}

    await on_system(net, work)
    assert net.calls == ["up"] and net.running()
