"""CPU speed options: transposed small-M Linear (fast_linear) and int8 dynamic quantization."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional

# Up to this many tokens per call the transposed GEMM wins on AVX2/AVX-512 CPUs (decode and
# verify blocks of 1–8 tokens); prefill of long prompts keeps the stock path.
FAST_MAX_TOKENS = 16


class FastLinear(nn.Linear):
    """nn.Linear whose forward computes (W @ xᵀ)ᵀ for few tokens.

    Why: for M = 2–8 rows, ``x @ Wᵀ`` ([M, in] × [in, out]) hits a slow small-M GEMM path, while
    ``W @ xᵀ`` ([out, in] × [in, M]) streams W once in its stored layout. Same math, float
    rounding differs only in summation order.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """[..., in] → [..., out]."""
        n_tokens = input.numel() // self.in_features
        if n_tokens > FAST_MAX_TOKENS or input.dtype != self.weight.dtype:
            return functional.linear(input, self.weight, self.bias)
        x = input.reshape(n_tokens, self.in_features)  # [M, in]
        y = torch.mm(self.weight, x.t()).t()  # [out, in] @ [in, M] → [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*input.shape[:-1], self.out_features)


def use_fast_linear(model: nn.Module, enabled: bool = True) -> int:
    """Switch plain nn.Linear ↔ FastLinear in place (both ways, for A/B timing); returns how many."""
    src, dst = (nn.Linear, FastLinear) if enabled else (FastLinear, nn.Linear)
    count = 0
    for module in model.modules():
        if type(module) is src:
            # same parameters and state dict, only the forward changes
            module.__class__ = dst
            count += 1
    return count


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantization of all Linear layers, in place (weights int8, activations per call).

    The quantized layers are no longer nn.Linear, so fast_linear has nothing left to switch.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch deprecates torch.ao.quantization in favour of torchao; it still works here
        warnings.simplefilter("ignore")
        quantized: nn.Module = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
    return quantized
