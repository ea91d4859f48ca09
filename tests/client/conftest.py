"""Fixtures of the client tests."""

from __future__ import annotations

import pytest
from scripted import ScriptedServer


@pytest.fixture
def server():
    """``server(answer)``: a new :class:`scripted.ScriptedServer`, closed after the test."""
    servers = []

    def make(answer):
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
