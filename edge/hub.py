"""Edge-wide state of the adaptive controller: link, verify and draft estimates, candidates, clients."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from common.codec import CSQSState, parse_codec_spec
from edge.candidates import CandidateCodec, candidate_specs
from edge.estimators import CostLine, LinkEstimator, RejectionSnapshot
from edge.probe import Observed

FRAMING_BYTES = 14  # gRPC message prefix (5) + HTTP/2 DATA frame header (9) around each block


@dataclass
class TextPrior:
    """A client's last state for one (temperature, top_p): rejection model, recent q shapes, codec."""

    rejection: RejectionSnapshot
    window: list[Observed]
    codec: str | None


@dataclass
class ClientState:
    """What a client's next request starts from: C-SQS thresholds per spec, text priors."""

    csqs: dict[str, CSQSState] = field(default_factory=dict)
    text: dict[tuple[float, float], TextPrior] = field(default_factory=dict)


class ClientStates:
    """Bounded LRU of ClientState by client key (draftlink.session_key, else user, else the edge's key)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, ClientState] = OrderedDict()

    def get(self, key: str) -> ClientState:
        """The key's state (a fresh one, not kept, when capacity is 0)."""
        state = self._items.get(key)
        if state is None:
            state = ClientState()
            if self.capacity <= 0:
                return state
            self._items[key] = state
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return state

    def __len__(self) -> int:
        return len(self._items)


class AdaptiveHub:
    """One per edge: the link, verify and draft estimates every generation shares, and the candidates.

    The link, the cloud and the drafter are the same for every request, so a request starts from
    what earlier ones measured; the text-dependent parts (rejection model, q shapes) live per client.
    """

    def __init__(
        self,
        vocab_size: int,
        kinds: frozenset[str],
        default_codec: str,
        max_draft_len: int,
        client_states: int = 1024,
    ) -> None:
        self.vocab_size = vocab_size
        self.default_codec = parse_codec_spec(default_codec).canonical
        self.max_draft_len = max(1, max_draft_len)
        self.specs = candidate_specs(kinds, vocab_size, self.default_codec)
        self.candidates = {s: CandidateCodec(s, vocab_size) for s in self.specs}
        self.link = LinkEstimator()
        self.draft = CostLine(level=0.004, intercept_share=0.1)
        self.verify = CostLine(level=0.005, intercept_share=0.8)
        self.overhead_bits = 8.0 * (FRAMING_BYTES + 12) + 32.0
        self.cpu: dict[str, float] = {}  # measured compress + encode seconds per draft, by spec
        self._speed = 1.0  # measured / prior CPU (scales the priors of unmeasured specs)
        self.clients = ClientStates(client_states)

    def candidate(self, spec: str) -> CandidateCodec:
        key = parse_codec_spec(spec).canonical
        got = self.candidates.get(key)
        if got is None:  # a request's own static spec outside the grid
            got = self.candidates[key] = CandidateCodec(key, self.vocab_size)
        return got

    def codec_cpu(self, spec: str) -> float:
        got = self.cpu.get(spec)
        return got if got is not None else self.candidate(spec).prior_cpu() * self._speed

    def observe_codec(self, spec: str, drafts: int, seconds: float) -> None:
        if drafts <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        per = seconds / drafts
        old = self.cpu.get(spec)
        self.cpu[spec] = per if old is None else 0.8 * old + 0.2 * per
        ratio = per / max(self.candidate(spec).prior_cpu(), 1e-9)
        self._speed = 0.9 * self._speed + 0.1 * min(max(ratio, 0.05), 20.0)

    def observe_overhead(self, wire_bytes: int, payload_bytes: int) -> None:
        """Block bits beyond the drafts' formula bits: message fields, framing, codec header."""
        bits = 8.0 * (wire_bytes - payload_bytes + FRAMING_BYTES) + 32.0
        self.overhead_bits = 0.8 * self.overhead_bits + 0.2 * bits
