"""edge.resume.connect with scripted targets: spreading, failover, windows, what is final."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from common.errors import CapacityError, ConnectionLostError, InvalidRequestError, UnavailableError
from edge import resume
from edge.errors import APIError
from edge.resume import Deadline, connect


class _Channel:
    async def channel_ready(self) -> None:
        return None


class FakeTarget:
    def __init__(self, name: str) -> None:
        self.address = name
        self.status = "ok"
        self.active = 0
        self.healthy = True
        self.channel = _Channel()
        self.info: Any = None

    def mark_unhealthy(self, why: str) -> None:
        self.healthy = False
        self.status = why


class FakeClient:
    def __init__(self, *names: str, resume_timeout: float = 1.0) -> None:
        self.targets = [FakeTarget(n) for n in names]
        self.resume_timeout = resume_timeout

    @property
    def healthy(self) -> bool:
        return any(t.healthy for t in self.targets)

    def choose(self, avoid: Any = None) -> list[FakeTarget]:
        order = {id(t): i for i, t in enumerate(self.targets)}
        return sorted(self.targets, key=lambda t: (not t.healthy, t is avoid, t.active, order[id(t)]))

    async def resolve(self, force: bool = False) -> None:
        return None


def _claim(box: dict[str, Any]) -> Callable[[Any], None]:
    def claim(target: Any) -> None:
        if box.get("target") is not None:
            box["target"].active -= 1
        box["target"] = target
        target.active += 1

    return claim


async def _connect(client: FakeClient, open_on: Any, **kw: Any) -> Any:
    box: dict[str, Any] = {}
    kw.setdefault("patient", False)
    return await connect(client, _claim(box), open_on, lambda: None, Deadline(30), **kw)  # type: ignore[arg-type]


async def test_concurrent_sessions_spread_over_the_targets() -> None:
    client = FakeClient("a", "b")

    async def open_on(target: Any) -> None:
        await asyncio.sleep(0.01)

    chosen = await asyncio.gather(*(_connect(client, open_on) for _ in range(8)))
    assert sorted(t.address for t in chosen) == ["a"] * 4 + ["b"] * 4


async def test_failover_to_the_next_target_marks_the_failed_one() -> None:
    client = FakeClient("a", "b")

    async def open_on(target: Any) -> None:
        if target.address == "a":
            raise ConnectionLostError("reset", "UNKNOWN")

    assert (await _connect(client, open_on)).address == "b"
    assert not client.targets[0].healthy


async def test_a_full_cloud_is_skipped_when_opening() -> None:
    client = FakeClient("a", "b")

    async def open_on(target: Any) -> None:
        if target.address == "a":
            raise CapacityError("too many sessions")

    assert (await _connect(client, open_on)).address == "b"
    assert client.targets[0].healthy  # full is not down


async def test_request_errors_are_final_at_start_and_say_so_during_a_resume() -> None:
    client = FakeClient("a", "b")
    tried: list[str] = []

    async def open_on(target: Any) -> None:
        tried.append(target.address)
        raise InvalidRequestError("prompt too long")

    with pytest.raises(InvalidRequestError):
        await _connect(client, open_on)
    assert tried == ["a"]  # no other target gets the same bad request
    with pytest.raises(APIError) as err:
        await _connect(client, open_on, patient=True, cause=UnavailableError("lost"))
    assert err.value.code == "cloud_unavailable"
    assert "refused the resumed session" in err.value.message


async def test_resume_waits_for_a_cloud_to_come_back() -> None:
    client = FakeClient("a", resume_timeout=5.0)
    calls = 0

    async def open_on(target: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 4:  # down for three rounds of attempts
            raise UnavailableError("connection refused")

    target = await _connect(client, open_on, patient=True, cause=UnavailableError("lost"))
    assert target.address == "a"
    assert calls == 4


async def test_resume_gives_up_after_the_window_with_cloud_unavailable() -> None:
    client = FakeClient("a", resume_timeout=0.3)

    async def open_on(target: Any) -> None:
        raise UnavailableError("connection refused")

    with pytest.raises(APIError) as err:
        await _connect(client, open_on, patient=True, cause=UnavailableError("lost"))
    assert err.value.code == "cloud_unavailable"
    assert "within 0.3s" in err.value.message


async def test_impatient_start_fails_with_the_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resume, "QUICK_WINDOW_S", 0.2)
    client = FakeClient("a", "b")
    for t in client.targets:
        t.healthy = False

    async def open_on(target: Any) -> None:
        raise UnavailableError(f"{target.address} down")

    with pytest.raises(UnavailableError, match="down"):
        await _connect(client, open_on)


async def test_a_resume_skips_clouds_without_the_features_it_needs() -> None:
    from types import SimpleNamespace

    client = FakeClient("old", "new")
    client.targets[0].info = SimpleNamespace(features=("chain",))  # no resume, no position_rng
    client.targets[1].info = SimpleNamespace(features=("chain", "resume", "position_rng"))

    async def open_on(target: Any) -> None:
        return None

    needs = ("resume", "position_rng")
    target = await _connect(client, open_on, patient=True, cause=UnavailableError("lost"), needs=needs)
    assert target.address == "new"
    assert (await _connect(client, open_on)).address == "old"  # new requests need nothing


def test_what_a_live_session_survives() -> None:
    assert resume.lost(ConnectionLostError("cut", "CANCELLED")) is not None
    assert resume.lost(asyncio.InvalidStateError()) is not None  # a write after the call ended
    assert resume.lost(CapacityError("full")) is None  # only opening may go elsewhere
    assert resume.lost(InvalidRequestError("bad")) is None
    assert resume.lost(RuntimeError("bug")) is None
