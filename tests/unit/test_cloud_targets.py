"""The edge's cloud targets: --cloud parsing, dns: expansion, and the order sessions try targets in."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import ConfigError
from edge.client import CloudClient, CloudSettings, CloudTarget
from edge.config import parse_targets


def test_parse_targets() -> None:
    assert parse_targets("a:1") == [("static", "a", 1)]
    assert parse_targets(" a:1, dns:b.ns.svc:2 ,dns:///c:3,[::1]:4") == [
        ("static", "a", 1),
        ("dns", "b.ns.svc", 2),
        ("dns", "c", 3),
        ("static", "::1", 4),
    ]


@pytest.mark.parametrize("bad", ["", "a", "a:", ":1", "a:0", "a:65536", "a:x", "dns:b", "a:1,b"])
def test_parse_targets_refuses(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_targets(bad)


def _healthy(t: CloudTarget, ok: bool = True) -> None:
    t.compatible = True
    t._last_ok = time.monotonic() if ok else None


async def test_choose_prefers_healthy_then_least_used_then_list_order() -> None:
    client = CloudClient(CloudSettings("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"))
    try:
        a, b, c = client.targets
        for t in (a, b, c):
            _healthy(t)
        assert client.choose() == [a, b, c]
        a.active = 2
        b.active = 1
        assert client.choose() == [c, b, a]  # least used first
        _healthy(c, ok=False)
        assert client.choose() == [b, a, c]  # unhealthy last, still tried
        assert client.choose(avoid=b) == [a, b, c]  # a resume tries the others first
        a.compatible = False  # another model: never used
        assert client.choose() == [b, c]
        assert client.healthy
        for t in (b, c):
            _healthy(t, ok=False)
        assert not client.healthy
    finally:
        await client.close()


async def test_a_failure_forgets_health_and_verification() -> None:
    client = CloudClient(CloudSettings("127.0.0.1:1"))
    try:
        (t,) = client.targets
        _healthy(t)
        before = t.healthy
        t.mark_unhealthy("session lost")
        assert (before, t.healthy) == (True, False)
        assert t.compatible is None  # a restarted cloud may serve another model: check it again
        assert client.health_report()["status"] == "session lost"
    finally:
        await client.close()


async def test_dns_entries_expand_to_every_address() -> None:
    client = CloudClient(CloudSettings("dns:localhost:50999,127.0.0.2:7"))
    try:
        assert [t.address for t in client.targets] == ["127.0.0.2:7"]  # dns: targets come from resolve()
        await client.resolve(force=True)
        addresses = [t.address for t in client.targets]
        assert "127.0.0.1:50999" in addresses
        assert all(t.source == "dns:localhost:50999" for t in client.targets[1:])
        await client.resolve(force=True)  # idempotent: nothing new, nothing gone
        assert [t.address for t in client.targets] == addresses
    finally:
        await client.close()


async def test_token_travels_as_bearer_metadata() -> None:
    with_token = CloudClient(CloudSettings("127.0.0.1:1", token="s3cret"))
    without = CloudClient(CloudSettings("127.0.0.1:1"))
    try:
        assert with_token.metadata == (("authorization", "Bearer s3cret"),)
        assert without.metadata == ()
    finally:
        await with_token.close()
        await without.close()


def healthy(t: CloudTarget) -> bool:
    return t.healthy  # a call, not an attribute: mypy would narrow a property across the steps


def busy(t: CloudTarget) -> bool:
    return t.busy


async def test_open_sessions_vouch_for_a_target_and_a_failure_ends_that() -> None:
    """No health checks cross the link while sessions are open on a target: they keep it healthy
    past the polling window, the last one to finish refreshes it, and a failure ends it at once."""
    client = CloudClient(CloudSettings("127.0.0.1:1", health_interval=0.01))
    try:
        (t,) = client.targets
        _healthy(t)
        t.active = 1
        await asyncio.sleep(0.05)  # more than three polling intervals: a check is overdue
        assert busy(t)
        assert healthy(t)
        t.release()  # the session finished normally
        assert not busy(t)
        assert healthy(t)  # it vouched for the target just now
        await asyncio.sleep(0.05)
        assert not healthy(t)  # and the next check is due again
        _healthy(t)
        t.active = 1
        t.mark_unhealthy("session lost")
        assert not healthy(t)  # open sessions do not mask a failure
        t.release()
        assert not healthy(t)
    finally:
        await client.close()
