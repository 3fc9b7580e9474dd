"""A bank of low-rank residual experts of one layer: ``B^i (A^i x + a^i) + b^i`` (SPEC §2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ResidualExperts(nn.Module):
    """``num_experts`` experts ``A^i: rank x in_features``, ``B^i: out_features x rank``.

    The ``A`` of all experts is stored as one matrix ``[num_experts * rank, in_features]`` so
    that one GEMM projects every token onto every expert (SPEC §10).
    """

    def __init__(
        self, in_features: int, num_experts: int, rank: int, out_features: int, bias: bool = True
    ):
        super().__init__()
        self.num_experts, self.rank, self.out_features = num_experts, rank, out_features
        self.lora_A = nn.Linear(in_features, num_experts * rank, bias=bias)
        self.lora_B = nn.Parameter(torch.empty(num_experts, out_features, rank))
        self.lora_B_bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``A`` and ``B`` (as ``nn.Linear`` does), zero biases."""
        self.lora_A.reset_parameters()
        if self.lora_A.bias is not None:
            nn.init.zeros_(self.lora_A.bias)
        bound = 1.0 / math.sqrt(self.rank)  # kaiming_uniform(a=sqrt(5)) with fan_in = rank
        nn.init.uniform_(self.lora_B, -bound, bound)
        if self.lora_B_bias is not None:
            nn.init.zeros_(self.lora_B_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Residuals of every expert for every token: ``[N, d] -> [N, s, d_out]``."""
        h = self.lora_A(x).view(x.size(0), self.num_experts, self.rank)  # [N, s, r]
        out = torch.einsum("nsr,sor->nso", h, self.lora_B)  # [N, s, d_out]
        return out if self.lora_B_bias is None else out + self.lora_B_bias

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, out={self.out_features}"
