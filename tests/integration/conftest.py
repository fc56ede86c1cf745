from __future__ import annotations

import pytest

from erx_cli.system import LocalSystem as Network
from erx_core.progress import Progress
from tests.support import isolated_settings


@pytest.fixture(scope="session")
async def network(network_home):
    """The whole local network (pool, chain, tails, agents), started once for the session."""
    net = Network(isolated_settings(network_home), Progress())
    try:
        await net.up()
        yield net
    finally:
        net.down()
