"""PackedLM: one model forward over the new tokens of many sequences, each against its own KV cache."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from common.errors import ModelError
from common.models.loading import LoadedModel

# Registered attention implementations are named PREFIX + the model's own one ("sdpa", "eager", ...):
# the packed function delegates every non-packed call (CachedLM's DynamicCache path) to that one.
PREFIX = "draftlink_packed_"
MIN_CAPACITY = 64  # tokens a SeqKV allocates at first; it doubles when full
AttentionMode = Literal["segments", "gathered"]
_MODES = ("segments", "gathered")


class SeqKV:
    """One sequence's KV cache inside the packed layer (per layer K/V storage, growable).

    Storage is one tensor per layer, [2 (K/V), kv_heads, capacity, head_dim], on that layer's
    device (a model spread over several GPUs keeps each layer's cache beside it); positions >=
    num_tokens are stale and get overwritten, so crop only moves the length.
    """

    def __init__(self, owner: PackedLM) -> None:
        self.owner = owner
        self.num_tokens = 0  # tokens held
        self._kv: dict[int, torch.Tensor] = {}  # layer → [2, Hkv, capacity, D]

    @property
    def capacity(self) -> int:
        """Tokens every layer's storage holds before it must grow."""
        return min((int(kv.shape[2]) for kv in self._kv.values()), default=0)

    def crop(self, length: int) -> None:
        """Roll back to the first ``length`` tokens (0 <= length <= num_tokens), O(1): no copy."""
        if not 0 <= length <= self.num_tokens:
            raise ModelError(f"cannot crop a cache of {self.num_tokens} tokens to {length}")
        self.num_tokens = length

    def reset(self) -> None:
        """Drop every token and free the storage (start a new sequence)."""
        self.num_tokens = 0
        self._kv = {}

    def reserve(self, layer: int, total: int, like: torch.Tensor) -> None:
        """Room for ``total`` tokens in one layer (doubling), keeping the first num_tokens.

        like: that layer's [1, Hkv, T, D] key states (dtype and device of the storage).
        """
        old = self._kv.get(layer)
        have = 0 if old is None else int(old.shape[2])
        if total <= have:
            return
        cap = max(total, 2 * have, MIN_CAPACITY)
        heads, dim = int(like.shape[1]), int(like.shape[3])
        grown = torch.empty(2, heads, cap, dim, dtype=like.dtype, device=like.device)
        if old is not None and self.num_tokens:
            grown[:, :, : self.num_tokens] = old[:, :, : self.num_tokens]
        self._kv[layer] = grown

    def write(self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one layer's K/V ([Hkv, n, D] each) at positions start .. start + n - 1."""
        kv = self._kv.get(layer)
        assert kv is not None, "reserve() before write()"
        n = int(key.shape[1])
        kv[0, :, start : start + n] = key
        kv[1, :, start : start + n] = value

    def layer_kv(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` positions of one layer as ([1, Hkv, length, D], [1, Hkv, length, D]) views."""
        kv = self._kv[layer]
        return kv[0, :, :length].unsqueeze(0), kv[1, :, :length].unsqueeze(0)


@dataclass(frozen=True)
class _Segment:
    seq: SeqKV
    start: int  # offset of its first new token in the packed [1, T] batch
    n: int  # new tokens
    past: int  # tokens cached before this forward (= position of the first new token)


class _Plan:
    """One packed forward: handed to the model as its prepared mask AND as its cache.

    As the cache, update() writes each segment's new K/V into its SeqKV; as the mask, the packed
    attention function reads it to attend each segment's queries to its own stored K/V only.
    """

    def __init__(
        self, segments: list[_Segment], mode: AttentionMode, groups: int, device: torch.device
    ) -> None:
        self.segments = segments
        self.mode = mode
        self.groups = groups  # query heads per KV head (GQA)
        # per segment: None where sdpa needs no mask (one new token, or an empty past: plain
        # causal), else the offset-causal mask with rows repeated per query head of a KV group
        self.masks = [
            _grouped(_offset_causal(s.n, s.past, device), groups) if s.n > 1 and s.past else None
            for s in segments
        ]
        self.gathered_mask = _grouped(_block_mask(segments, device), groups) if mode == "gathered" else None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """key/value_states: [1, Hkv, T, D] for the packed tokens; each segment's slice is stored."""
        for s in self.segments:
            # the dtype and device are what this layer computes in and lives on
            s.seq.reserve(layer_idx, s.past + s.n, key_states)
            end = s.start + s.n
            s.seq.write(layer_idx, s.past, key_states[0, :, s.start : end], value_states[0, :, s.start : end])
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Only asked when position_ids are missing, which never happens here."""
        raise ModelError("a packed forward needs explicit position_ids")


def _offset_causal(n: int, past: int, device: torch.device) -> torch.Tensor:
    """[n, past + n] bool: new token j (position past + j) sees positions <= past + j."""
    keys = torch.arange(past + n, device=device)  # [S]
    queries = past + torch.arange(n, device=device)  # [n]
    return keys[None, :] <= queries[:, None]


def _block_mask(segments: list[_Segment], device: torch.device) -> torch.Tensor:
    """[T, ΣS] bool over the concatenated K/V of all segments (the gathered alternative)."""
    total_q = sum(s.n for s in segments)
    total_k = sum(s.past + s.n for s in segments)
    mask = torch.zeros(total_q, total_k, dtype=torch.bool, device=device)
    k0 = 0
    for s in segments:
        mask[s.start : s.start + s.n, k0 : k0 + s.past + s.n] = _offset_causal(s.n, s.past, device)
        k0 += s.past + s.n
    return mask


def _grouped(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """[n, S] → [1, 1, groups·n, S]: the rows of the grouped query layout of _masked_attention."""
    return mask.repeat(groups, 1)[None, None]


def _masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """query [1, H, n, D], key/value [1, Hkv, S, D], mask [1, 1, (H/Hkv)·n, S] → [1, n, H, D].

    GQA without copying K/V: the H/Hkv query heads sharing a KV head are stacked along the query
    axis ([1, Hkv, (H/Hkv)·n, D]), so plain sdpa runs on the stored K/V as they are (transformers'
    sdpa path would repeat_kv the whole history for a masked multi-token query: ~3× slower here).
    """
    _, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    mask = mask.to(query.device)  # no-op on one device; a layer on another GPU needs its own copy
    grouped = query.reshape(1, kv_heads, (heads // kv_heads) * n, dim)  # head h = g·groups + r
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(1, heads, n, dim).transpose(1, 2)  # [1, n, H, D]


def _segment_attention(module: Any, query: torch.Tensor, plan: _Plan, scaling: float | None) -> torch.Tensor:
    """query [1, H, T, D] → [1, T, H, D]: each segment attends to its own sequence only."""
    layer = int(module.layer_idx)
    if plan.mode == "gathered":
        # one sdpa over every segment's K/V concatenated, block-diagonal mask (copies the history)
        keys, values = zip(*(s.seq.layer_kv(layer, s.past + s.n) for s in plan.segments), strict=True)
        key, value = torch.cat(keys, dim=2), torch.cat(values, dim=2)  # [1, Hkv, ΣS, D]
        assert plan.gathered_mask is not None
        return _masked_attention(query, key, value, plan.gathered_mask, scaling)
    outs = []
    for s, mask in zip(plan.segments, plan.masks, strict=True):
        key, value = s.seq.layer_kv(layer, s.past + s.n)  # [1, Hkv, past + n, D] views
        q = query[:, :, s.start : s.start + s.n]  # [1, H, n, D]
        if mask is None:  # decode step or fresh prompt: transformers' own sdpa call (GQA, causal)
            out, _ = sdpa_attention_forward(module, q, key, value, None, scaling=scaling)  # [1, n, H, D]
        else:
            out = _masked_attention(q, key, value, mask, scaling)
        outs.append(out)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _make_attention(base: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The registered attention function: packed plans here, everything else to ``base`` unchanged."""

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(attention_mask, _Plan):
            return _segment_attention(module, query, attention_mask, scaling), None
        if base == "eager":
            # the modeling file's own eager function (what its layers fall back to)
            fn: Callable[..., Any] = sys.modules[type(module).__module__].eager_attention_forward
        else:
            fn = ALL_ATTENTION_FUNCTIONS[base]
        result: tuple[torch.Tensor, torch.Tensor | None] = fn(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return result

    return attention


def install(model: Any) -> str:
    """Switch ``model`` to the packed attention (idempotent); returns the implementation name.

    Why not a separate model copy: the same weights serve CachedLM and PackedLM, and every call
    without a plan goes to the original implementation and its mask function, bit for bit.
    """
    base = str(model.config._attn_implementation)
    if base.startswith(PREFIX):
        return base
    if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS:
        raise ModelError(f"cannot pack attention implementation {base!r}")
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise ModelError(f"{type(model).__name__} does not take a custom attention implementation")
    return name


def _device_of(module: Any, default: str | torch.device) -> torch.device:
    """The device of a module's weight (a model spread with device_map has several); else default.

    int8-quantized Linears keep packed weights behind a method, not a tensor: they use default.
    """
    weight = getattr(module, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else torch.device(default)


class PackedLM:
    """Batched forwards over ragged sequences sharing one loaded model; not thread-safe (one thread)."""

    def __init__(self, lm: LoadedModel, mode: AttentionMode = "segments") -> None:
        if mode not in _MODES:
            raise ModelError(f"unknown attention mode {mode!r}; known: {', '.join(_MODES)}")
        config = lm.model.config
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
            raise ModelError("packed forwards support full-attention layers only (no sliding window)")
        self.lm = lm
        self.mode: AttentionMode = mode
        self.num_layers = int(config.num_hidden_layers)
        self.groups = int(config.num_attention_heads) // int(config.num_key_value_heads)
        self.embed_rows = int(lm.model.get_input_embeddings().weight.shape[0])
        self.device = _device_of(lm.model.get_input_embeddings(), lm.device)  # where ids go in
        self.head_device = _device_of(lm.model.get_output_embeddings(), self.device)  # rows come out
        install(lm.model)

    def new_seq(self) -> SeqKV:
        """An empty sequence owned by this model."""
        return SeqKV(self)

    def forward(self, items: Sequence[tuple[SeqKV, Sequence[int], int]]) -> list[torch.Tensor]:
        """Append each item's ids to its seq in ONE forward; per item the last ``rows`` logits.

        item = (seq, new ids (>= 1), rows with 0 <= rows <= len(ids)); returns [rows, V] float32
        CPU tensors. A seq appears at most once per call. On an exception no seq changes length.
        """
        if not items:
            return []
        segments, ids, keep = self._layout(items)
        plan = _Plan(segments, self.mode, self.groups, self.device)
        positions = [s.past + j for s in segments for j in range(s.n)]
        total_rows = len(keep)
        # the lm_head runs on the wanted rows only: a long prefill never materialises [T, V]
        index = torch.tensor(keep or [len(ids) - 1], dtype=torch.long, device=self.head_device)
        with torch.inference_mode():
            out = self.lm.model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),  # [1, T]
                position_ids=torch.tensor([positions], dtype=torch.long, device=self.device),  # [1, T]
                attention_mask={"full_attention": plan, "sliding_attention": plan},
                cache=plan,
                use_cache=True,
                logits_to_keep=index,
            )
            # [1, R, V_padded] → [R, V]: drop embedding-padding ids the tokenizer never emits
            logits = out.logits[0, :total_rows, : self.lm.vocab_size].float().cpu()
        for s in segments:
            s.seq.num_tokens = s.past + s.n
        return list(torch.split(logits, [rows for _, _, rows in items]))

    def _layout(
        self, items: Sequence[tuple[SeqKV, Sequence[int], int]]
    ) -> tuple[list[_Segment], list[int], list[int]]:
        """Validate items → (segments, packed ids [T], packed indices of the wanted rows)."""
        segments: list[_Segment] = []
        ids: list[int] = []
        keep: list[int] = []
        seen: set[int] = set()
        for seq, new_ids, rows in items:
            n = len(new_ids)
            if seq.owner is not self:
                raise ModelError("a SeqKV from another PackedLM")
            if id(seq) in seen:
                raise ModelError("a sequence appears twice in one packed forward")
            if n == 0 or not 0 <= rows <= n:
                raise ModelError(f"bad packed item: {n} new ids, {rows} rows")
            if min(new_ids) < 0 or max(new_ids) >= self.embed_rows:
                raise ModelError(f"token id out of range [0, {self.embed_rows})")
            seen.add(id(seq))
            segments.append(_Segment(seq, len(ids), n, seq.num_tokens))
            keep.extend(range(len(ids) + n - rows, len(ids) + n))
            ids.extend(int(t) for t in new_ids)
        return segments, ids, keep
