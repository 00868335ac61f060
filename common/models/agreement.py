"""Greedy draft/target agreement: how often the drafter's argmax equals the target's."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from common.models.cached import CachedLM
from common.models.loading import LoadedModel


@dataclass(frozen=True)
class Agreement:
    """Matches over positions of the target's own greedy continuations."""

    matches: int
    positions: int

    @property
    def rate(self) -> float:
        """Fraction of positions where argmax(draft) == argmax(target)."""
        return self.matches / self.positions if self.positions else float("nan")


def greedy_continuation(
    lm: LoadedModel, prompt_ids: Sequence[int], n_new: int, stop_ids: Collection[int] = ()
) -> list[int]:
    """Greedy-decode up to ``n_new`` tokens after the prompt (argmax, lowest id on ties).

    Decoding ends after the first token in ``stop_ids`` (it is included), as a server would stop.
    """
    cached = CachedLM(lm)
    logits = cached.extend(prompt_ids)  # [n_prompt, V]
    out: list[int] = []
    while len(out) < n_new:
        out.append(int(torch.argmax(logits[-1])))
        if out[-1] in stop_ids:
            break
        logits = cached.extend(out[-1:])  # [1, V]
    return out


def path_agreement(
    draft: LoadedModel, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[int]]
) -> Agreement:
    """Teacher-forced on the target's greedy ``paths``: how often argmax(draft) is the path token."""
    matches = positions = 0
    for prompt, path in zip(prompts, paths, strict=True):
        # one draft forward over prompt + path; rows len(prompt)-1 .. -2 predict the path tokens
        logits = CachedLM(draft).extend([*prompt, *path])[len(prompt) - 1 : -1]  # [n_new, V]
        matches += int((torch.argmax(logits, dim=-1) == torch.tensor(path)).sum())
        positions += len(path)
    return Agreement(matches, positions)


def greedy_agreement(
    target: LoadedModel, draft: LoadedModel, prompts: Sequence[Sequence[int]], n_new: int = 16
) -> Agreement:
    """The per-token acceptance of greedy speculation, on the target's own greedy continuations."""
    paths = [greedy_continuation(target, p, n_new) for p in prompts]
    return path_agreement(draft, prompts, paths)
