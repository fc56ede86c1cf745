"""Helpers for tests that start real processes."""

from __future__ import annotations

from erx_core.processes import free_port
from erx_core.settings import AgentSettings, ChainSettings, PoolSettings, Settings, TailsSettings


def _ports(n: int) -> list[int]:
    seen: set[int] = set()
    while len(seen) < n:
        seen.add(free_port())
    return sorted(seen)


def isolated_settings(home, *, block_time_s: float | None = 1.0) -> Settings:
    """Settings for a private network under `home`, on ports nobody else uses right now."""
    p = _ports(8 + 2 + 12)
    agents = [
        AgentSettings(name="doctor", role="doctor", label="Test Doctor", inbound_port=p[10], admin_port=p[11],
                      controller_port=p[12]),
        AgentSettings(name="pharmacy", role="pharmacy", label="Test Pharmacy", inbound_port=p[13],
                      admin_port=p[14], controller_port=p[15]),
        AgentSettings(name="pharmacy-b", role="pharmacy", label="Test Pharmacy B", inbound_port=p[16],
                      admin_port=p[17], controller_port=p[18]),
        AgentSettings(name="patient", role="patient", label="Test Patient", inbound_port=p[19], admin_port=p[20],
                      controller_port=p[21], public_did=False),
    ]
    return Settings(
        home=home,
        pool=PoolSettings(node_ports=p[0:8:2], client_ports=p[1:8:2], network_name="erx-test"),
        chain=ChainSettings(port=p[8], block_time_s=block_time_s),
        tails=TailsSettings(port=p[9]),
        agents=agents,
    )
