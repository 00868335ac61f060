"""PackedLM on the fetched Qwen2.5-Coder 0.5B (skipped unless `make fetch-models` ran): equals CachedLM."""

from __future__ import annotations

import pytest
import torch

from common.models import CachedLM, load_model
from common.models.packed import PackedLM

pytestmark = [pytest.mark.real_models, pytest.mark.slow]


def test_packed_matches_cachedlm_on_qwen() -> None:
    lm = load_model("builtin:qwen2.5-coder-0.5b")
    prompts = [
        lm.tokenizer("import os\n\ndef list_files(path):\n")["input_ids"],
        lm.tokenizer("class Stack:\n    def __init__(self):\n        self.items = []\n")["input_ids"],
    ]
    refs = [CachedLM(lm) for _ in prompts]
    want_prefill = [r.extend(p)[-1:] for r, p in zip(refs, prompts, strict=True)]
    packed = PackedLM(lm)
    seqs = [packed.new_seq() for _ in prompts]
    got_prefill = packed.forward([(s, p, 1) for s, p in zip(seqs, prompts, strict=True)])
    block, step = [220, 470, 284, 2643, 1769], [198]  # a 5-token verify block next to a decode step
    got = packed.forward([(seqs[0], block, 5), (seqs[1], step, 1)])
    want = [refs[0].extend(block), refs[1].extend(step)]
    for g, w in zip([*got_prefill, *got], [*want_prefill, *want], strict=True):
        assert torch.equal(g.argmax(-1), w.argmax(-1))
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-3)
