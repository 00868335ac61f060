"""BatchEngine: round robin, budgets, slicing, cancellation, isolation, close; real-model equality."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from common.errors import ConfigError, ModelError
from common.models import CachedLM, LoadedModel, load_model
from common.models.engine import BatchEngine, BatchLimits, EngineClosedError, EngineObserver, Job, Work
from common.models.packed import PackedLM, SeqKV

BOOM = -666  # a token id that makes the fake model's forward raise
V = 4  # the fake model's vocabulary


class FakeLM(PackedLM):
    """Records each forward; row logits encode (absolute position, token id) of their token."""

    def __init__(self) -> None:  # no model: only what the engine touches
        self.lm = SimpleNamespace(vocab_size=V)  # type: ignore[assignment]
        self.steps: list[list[tuple[int, int, int]]] = []  # per forward: (seq id, tokens, rows)
        self.entered = threading.Event()
        self.gate: threading.Event | None = None  # when set, each forward waits for it

    def forward(self, items: Sequence[tuple[SeqKV, Sequence[int], int]]) -> list[torch.Tensor]:
        self.steps.append([(id(seq), len(ids), rows) for seq, ids, rows in items])
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if any(BOOM in ids for _, ids, _ in items):
            raise RuntimeError("forward failed")
        out = []
        for seq, ids, rows in items:
            n = len(ids)
            logits = torch.zeros(rows, V)
            for r, j in enumerate(range(n - rows, n)):
                logits[r, 0] = seq.num_tokens + j  # absolute position
                logits[r, 1] = ids[j]
            seq.num_tokens += n
            out.append(logits)
        return out


class ScriptJob(Job):
    """Feeds a fixed list of Work items and keeps every logits block it is given."""

    def __init__(self, seq: SeqKV, works: Sequence[Work], fail_in: str | None = None) -> None:
        self.seq = seq
        self.works = list(works)
        self.got: list[torch.Tensor] = []
        self.calls: list[str] = []
        self.fail_in = fail_in

    def _maybe_fail(self, where: str) -> None:
        self.calls.append(where)
        if self.fail_in == where:
            raise ValueError(f"job failed in {where}")

    def next_work(self) -> Work | None:
        self._maybe_fail("next_work")
        return self.works.pop(0) if self.works else None

    def on_logits(self, logits: torch.Tensor) -> None:
        self._maybe_fail("on_logits")
        self.got.append(logits)

    def result(self) -> list[torch.Tensor]:
        self._maybe_fail("result")
        return self.got


class Recorder(EngineObserver):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.first: list[float] = []

    def on_step(self, sessions: int, tokens: int, seconds: float) -> None:
        self.steps.append((sessions, tokens))

    def on_first_forward(self, wait_seconds: float) -> None:
        self.first.append(wait_seconds)


def limits(**kw: Any) -> BatchLimits:
    return BatchLimits(**{"batch_wait_s": 0.0, **kw})


async def held(engine: BatchEngine) -> tuple[threading.Event, asyncio.Task[None]]:
    """Block the engine thread (inside a call) until the returned event is set."""
    release, inside = threading.Event(), threading.Event()

    def wait() -> None:
        inside.set()
        release.wait(30)

    task = asyncio.create_task(engine.call(wait))
    await asyncio.to_thread(inside.wait, 30)
    return release, task


def block(n: int, start: int = 1) -> list[int]:
    return list(range(start, start + n))


# ── scheduling (fake model) ─────────────────────────────────────────────────────────────────────


async def test_long_prefill_is_sliced_and_short_jobs_are_not_starved() -> None:
    model, rec = FakeLM(), Recorder()
    engine = BatchEngine(model, limits(max_batch_tokens=40, max_batch_sessions=4, prefill_chunk=16), rec)
    release, hold = await held(engine)
    long = ScriptJob(model.new_seq(), [Work(block(1000), 1)])
    shorts = [ScriptJob(model.new_seq(), [Work(block(5), 5)] * 3) for _ in range(3)]
    tasks = [asyncio.create_task(engine.run(j)) for j in [long, *shorts]]
    await asyncio.sleep(0.05)  # all four are in the inbox before the engine runs a step
    release.set()
    await hold
    done_step: dict[int, int] = {}
    for task, job in zip(tasks, [long, *shorts], strict=True):
        await task
        done_step[id(job)] = max(i for i, s in enumerate(model.steps) if any(k == id(job.seq) for k, *_ in s))
    engine.close()
    # every step within budget; the long work goes in slices of <= 16 tokens
    assert all(sessions <= 4 and tokens <= 40 for sessions, tokens in rec.steps)
    assert all(n <= 16 for s in model.steps for k, n, _ in s if k == id(long.seq))
    # round robin: each short job's 3 blocks ride in the first 3 steps, next to the prefill
    assert all(done_step[id(j)] == 2 for j in shorts)
    assert len(model.steps) == -(-1000 // 16)  # the prefill alone after that: one slice per step
    # slices collected: exactly one row (the last token, position 999) delivered once
    (rows,) = long.got
    assert rows.tolist() == [[999.0, 1000.0, 0.0, 0.0]]
    assert [len(j.got) for j in shorts] == [3, 3, 3]
    assert len(rec.first) == 4
    assert min(rec.first) >= 0


async def test_session_and_token_budgets() -> None:
    model, rec = FakeLM(), Recorder()
    engine = BatchEngine(model, limits(max_batch_tokens=12, max_batch_sessions=2, prefill_chunk=100), rec)
    jobs = [ScriptJob(model.new_seq(), [Work(block(5), 1), Work(block(5), 2)]) for _ in range(5)]
    results = await asyncio.gather(*(engine.run(j) for j in jobs))
    engine.close()
    assert all(s <= 2 and t <= 12 for s, t in rec.steps)
    assert sum(t for _, t in rec.steps) == 50
    for res in results:
        assert [r.shape[0] for r in res] == [1, 2]
        assert res[0][:, 0].tolist() == [4.0]  # positions of the wanted rows
        assert res[1][:, 0].tolist() == [8.0, 9.0]


async def test_split_work_collects_the_wanted_rows() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits(prefill_chunk=3))
    job = ScriptJob(model.new_seq(), [Work(block(10, start=100), 7), Work(block(2, start=50), 0)])
    got = await engine.run(job)
    engine.close()
    assert [len(s) for s in model.steps] == [1] * 5  # 3 + 3 + 3 + 1, then the 2-token work
    assert [s[0][1:] for s in model.steps] == [(3, 0), (3, 3), (3, 3), (1, 1), (2, 0)]
    first, second = got
    assert first[:, 0].tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert first[:, 1].tolist() == [103, 104, 105, 106, 107, 108, 109]
    assert second.shape == (0, V)
    assert job.seq.num_tokens == 12


async def test_gather_window_batches_near_simultaneous_jobs() -> None:
    model = FakeLM()
    engine = BatchEngine(model, BatchLimits(max_batch_sessions=2, batch_wait_s=5.0))
    jobs = [ScriptJob(model.new_seq(), [Work([1], 1)]) for _ in range(2)]
    await asyncio.gather(*(engine.run(j) for j in jobs))  # the window closes when the 2nd arrives
    engine.close()
    assert [len(s) for s in model.steps] == [2]


async def test_chained_job_and_empty_job() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())

    class Chain(Job):
        """Like the drafter: each next token comes from the previous logits."""

        def __init__(self, seq: SeqKV) -> None:
            self.seq, self.out = seq, [7]

        def next_work(self) -> Work | None:
            return Work([self.out[-1]], 1) if len(self.out) < 5 else None

        def on_logits(self, logits: torch.Tensor) -> None:
            self.out.append(int(logits[0, 0]) + 10)  # position + 10

        def result(self) -> list[int]:
            return self.out

    assert await engine.run(Chain(model.new_seq())) == [7, 10, 11, 12, 13]
    assert await engine.run(ScriptJob(model.new_seq(), [])) == []
    assert await engine.call(lambda: threading.current_thread().name) == "model-engine"
    engine.close()


# ── failure isolation, cancellation, close ─────────────────────────────────────────────────────


@pytest.mark.parametrize("where", ["next_work", "on_logits", "result"])
async def test_failing_job_does_not_affect_others(where: str) -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())
    bad = ScriptJob(model.new_seq(), [Work(block(3), 1)], fail_in=where)
    good = [ScriptJob(model.new_seq(), [Work(block(4), 2), Work([9], 1)]) for _ in range(2)]
    outcomes = await asyncio.gather(*(engine.run(j) for j in [bad, *good]), return_exceptions=True)
    assert isinstance(outcomes[0], ValueError)
    for res in outcomes[1:]:
        assert isinstance(res, list)
        assert [r[:, 0].tolist() for r in res] == [[2.0, 3.0], [4.0]]
    # the engine keeps serving
    assert len(await engine.run(ScriptJob(model.new_seq(), [Work([1], 1)]))) == 1
    assert engine.queued == 0
    engine.close()


async def test_forward_failure_fails_only_that_step() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits(max_batch_sessions=2))
    release, hold = await held(engine)
    doomed = [ScriptJob(model.new_seq(), [Work([BOOM], 1)]), ScriptJob(model.new_seq(), [Work([1], 1)])]
    later = ScriptJob(model.new_seq(), [Work([2], 1)])  # beyond the session limit: the next step
    tasks = [asyncio.create_task(engine.run(j)) for j in [*doomed, later]]
    await asyncio.sleep(0.05)
    release.set()
    await hold
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes[:2])
    assert isinstance(outcomes[2], list)
    assert outcomes[2][0].tolist() == [[0.0, 2.0, 0.0, 0.0]]
    engine.close()


async def test_bad_work_fails_the_job() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())
    for work in (Work([], 0), Work([1, 2], 3), Work([1], -1)):
        with pytest.raises(ModelError):
            await engine.run(ScriptJob(model.new_seq(), [work]))
    engine.close()


async def test_cancel_while_waiting_withdraws_the_job() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())
    release, hold = await held(engine)
    withdrawn = ScriptJob(model.new_seq(), [Work(block(3), 1)])
    kept = ScriptJob(model.new_seq(), [Work(block(2), 1)])
    t_withdrawn = asyncio.create_task(engine.run(withdrawn))
    t_kept = asyncio.create_task(engine.run(kept))
    await asyncio.sleep(0.05)
    assert engine.queued == 2
    t_withdrawn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t_withdrawn
    assert engine.queued == 1
    release.set()
    await hold
    assert len(await t_kept) == 1
    assert withdrawn.calls == []  # never asked for work
    assert withdrawn.seq.num_tokens == 0
    assert engine.queued == 0
    engine.close()


async def test_cancel_during_forward_waits_for_the_step() -> None:
    model = FakeLM()
    model.gate = threading.Event()
    engine = BatchEngine(model, limits())
    job = ScriptJob(model.new_seq(), [Work(block(3), 1), Work(block(3), 1)])
    task = asyncio.create_task(engine.run(job))
    await asyncio.to_thread(model.entered.wait, 30)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the forward over its seq is still running
    model.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.calls == ["next_work"]  # no on_logits, no further work after the step
    assert job.seq.num_tokens == 3
    assert engine.queued == 0
    engine.close()


async def test_close_fails_pending_work_and_stops() -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())
    release, hold = await held(engine)
    pending = asyncio.create_task(engine.run(ScriptJob(model.new_seq(), [Work([1], 1)])))
    call = asyncio.create_task(engine.call(lambda: 1))
    await asyncio.sleep(0.05)
    closer = asyncio.create_task(asyncio.to_thread(engine.close))
    await asyncio.sleep(0.05)
    release.set()
    await hold
    await closer
    with pytest.raises(EngineClosedError):
        await pending
    with pytest.raises(EngineClosedError):
        await call
    assert not engine._thread.is_alive()
    assert engine.queued == 0
    with pytest.raises(EngineClosedError):
        await engine.run(ScriptJob(model.new_seq(), []))
    with pytest.raises(EngineClosedError):
        await engine.call(lambda: 1)
    engine.close()  # twice is fine


async def test_internal_error_fails_jobs_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeLM()
    engine = BatchEngine(model, limits())
    release, hold = await held(engine)

    def broken() -> list[object]:
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(engine, "_select", broken)
    task = asyncio.create_task(engine.run(ScriptJob(model.new_seq(), [Work([1], 1)])))
    await asyncio.sleep(0.05)
    release.set()
    await hold
    with pytest.raises(EngineClosedError):
        await task
    await asyncio.to_thread(engine._thread.join, 30)
    assert not engine._thread.is_alive()
    assert engine.queued == 0
    with pytest.raises(EngineClosedError):
        await engine.run(ScriptJob(model.new_seq(), []))


def test_bad_limits() -> None:
    for kw in (
        {"max_batch_tokens": 0},
        {"max_batch_sessions": 0},
        {"prefill_chunk": 0},
        {"batch_wait_s": -1},
    ):
        with pytest.raises(ConfigError):
            BatchLimits(**kw)


# ── real tiny model: engine output equals single-session CachedLM ──────────────────────────────


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model("builtin:tiny-target")


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 2000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class VerifyJob(Job):
    """Verifier-like rounds: prompt prefill (last row), then blocks of 5 with rollback of 3."""

    def __init__(self, seq: SeqKV, prompt: list[int], blocks: list[list[int]]) -> None:
        self.seq, self.todo = seq, [Work(prompt, 1), *(Work(b, len(b)) for b in blocks)]
        self.got: list[torch.Tensor] = []

    def next_work(self) -> Work | None:
        if self.got and self.got[-1].shape[0] == 5:
            self.seq.crop(self.seq.num_tokens - 3)  # 2 of the 5 accepted
        return self.todo.pop(0) if self.todo else None

    def on_logits(self, logits: torch.Tensor) -> None:
        self.got.append(logits)

    def result(self) -> list[torch.Tensor]:
        return self.got


def replay(lm: LoadedModel, prompt: list[int], blocks: list[list[int]]) -> list[torch.Tensor]:
    ref = CachedLM(lm)
    out = [ref.extend(prompt)[-1:]]
    for b in blocks:
        out.append(ref.extend(b))
        ref.crop(ref.num_tokens - 3)
    return out


async def test_real_model_mixed_jobs_equal_cachedlm(lm: LoadedModel) -> None:
    packed = PackedLM(lm)
    engine = BatchEngine(packed, limits(max_batch_tokens=96, prefill_chunk=64))
    specs = [(ids(300, 1), [ids(5, 2)]), (ids(20, 3), [ids(5, 4), ids(5, 5), ids(5, 6)]), (ids(7, 7), [])]
    jobs = [VerifyJob(packed.new_seq(), p, b) for p, b in specs]

    class Greedy(Job):
        def __init__(self, seq: SeqKV, prompt: list[int]) -> None:
            self.seq, self.out, self.prompt = seq, list(prompt), len(prompt)

        def next_work(self) -> Work | None:
            if len(self.out) - self.prompt >= 6:
                return None
            return Work(self.out[self.seq.num_tokens :], 1)

        def on_logits(self, logits: torch.Tensor) -> None:
            self.out.append(int(logits[-1].argmax()))

        def result(self) -> list[int]:
            return self.out[self.prompt :]

    greedy_prompt = ids(40, 8)
    results = await asyncio.gather(
        *(engine.run(j) for j in jobs), engine.run(Greedy(packed.new_seq(), greedy_prompt))
    )
    engine.close()
    for (prompt, blocks), got in zip(specs, results[:3], strict=True):
        want = replay(lm, prompt, blocks)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)
    ref, expect = CachedLM(lm), []
    logits = ref.extend(greedy_prompt)
    for _ in range(6):
        expect.append(int(logits[-1].argmax()))
        logits = ref.extend(expect[-1:])
    assert results[3] == expect
