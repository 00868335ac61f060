"""Fixtures shared by the cloud component tests: a channel to the module's `server`, a leak check."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.support.cloud import ServerThread


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    """One insecure channel per module to the module's own `server` fixture (a ServerThread)."""
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def no_leaked_sessions(server: ServerThread) -> Iterator[None]:
    """After the test, no session is live on the module's server (use via pytestmark)."""
    yield
    assert server.wait_live(0), "a session outlived its test"
