"""Shared fixtures. Integration fixtures start real processes in a throw-away state directory on
free ports, so tests never touch the developer's own `.erx/` network or its ports."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def network_home(tmp_path_factory):
    return tmp_path_factory.mktemp("erx-home")
