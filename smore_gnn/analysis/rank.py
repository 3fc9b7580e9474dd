"""How many output directions an adapter's updates use: the rank of its deltas.

Every S'MoRE update is ``W_proj m_root`` with ``m_root`` in ``R^{d_L}`` (docs/spec.md §8), so
the deltas of any set of tokens span at most ``d_L`` directions, and a LoRA of rank ``r`` at
most ``r``. Two measures, both on the delta alone (the frozen base output is never subtracted,
so no cancellation error enters):

* :func:`update_rank`: the numerical rank of the stacked deltas ``[N, d_out]`` of ``N`` tokens
  (the dimension of the space the updates live in);
* :func:`jacobian_rank`: per token, the rank of ``d delta / d x`` (``d_out x d``), averaged:
  how many directions one token's update can move in. It is measured as the rank of
  ``V^T J`` for ``k`` random probes ``V`` ([d_out, k]; reverse-mode, one batched backward),
  which equals ``rank(J)`` almost surely when ``k >= rank(J)``; ``k = min(d, d_out)`` is exact.

The numerical rank counts singular values above ``rtol`` times the largest (computed in
float64); a zero matrix has rank 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

DeltaFn = Callable[[Tensor], Tensor]


def delta_function(module: nn.Module) -> DeltaFn:
    """``x [N, d] -> delta [N, d_out]`` of one adapted linear, without its base output.

    Supports an :class:`~smore_gnn.nn.layer.SMoRELinear` (routed as in its forward) and a peft
    LoRA layer (the active adapters' ``B A x`` times their scaling).

    Raises:
        TypeError: ``module`` is neither.
    """
    if hasattr(module, "adapter_delta") and hasattr(module, "router"):  # SMoRELinear
        return lambda x: module.adapter_delta(x, module.router(x))
    if hasattr(module, "lora_A") and hasattr(module, "lora_B"):  # peft LoRA
        names = [a for a in module.active_adapters if a in module.lora_A]

        def lora(x: Tensor) -> Tensor:
            out = 0
            for a in names:
                out = out + module.lora_B[a](module.lora_A[a](x)) * module.scaling[a]
            return out

        return lora
    raise TypeError(
        f"delta_function expects an SMoRELinear or a peft LoRA layer (got "
        f"{type(module).__name__}); pass a callable x -> delta instead"
    )


def _as_fn(target: nn.Module | DeltaFn) -> DeltaFn:
    return delta_function(target) if isinstance(target, nn.Module) else target


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values of ``matrix`` [m, n] in float64, largest first."""
    return torch.linalg.svdvals(matrix.detach().to(torch.float64))


def numerical_rank(matrix: Tensor, rtol: float = 1e-5) -> int:
    """Singular values of ``matrix`` above ``rtol`` times the largest (0 for a zero matrix)."""
    s = singular_values(matrix)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())


@torch.no_grad()
def stacked_deltas(target: nn.Module | DeltaFn, x: Tensor) -> Tensor:
    """The deltas of tokens ``x`` [N, d], stacked: [N, d_out]."""
    return _as_fn(target)(x)


def update_rank(target: nn.Module | DeltaFn, x: Tensor, rtol: float = 1e-5) -> int:
    """Numerical rank of the stacked deltas of tokens ``x`` [N, d] (see the module docstring)."""
    return numerical_rank(stacked_deltas(target, x), rtol)


def jacobian_rank(
    target: nn.Module | DeltaFn,
    x: Tensor,
    probes: int = 128,
    rtol: float = 1e-5,
    seed: int = 0,
) -> float:
    """Mean over tokens ``x`` [T, d] of ``rank(d delta_t / d x_t)``, with ``probes`` random
    output directions per token (capped at ``min(d, d_out)``, where it is exact).

    Each token is repeated ``k`` times in one batch, so ``delta`` must treat tokens
    independently (true of both adapters in eval mode: routing is per token).
    """
    fn = _as_fn(target)
    with torch.no_grad():
        d_out = fn(x[:1]).size(-1)
    tokens, d = x.shape
    k = min(probes, d, d_out)
    rep = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)  # [T k, d]
    with torch.enable_grad():
        out = fn(rep)  # [T k, d_out]
        gen = torch.Generator().manual_seed(seed)
        probe = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        (grad,) = torch.autograd.grad((out * probe).sum(), rep)  # rows v^T J_t: [T k, d]
    grad = grad.view(tokens, k, d)  # [T, k, d]
    return sum(numerical_rank(g, rtol) for g in grad) / tokens


def rank_report(
    target: nn.Module | DeltaFn,
    x: Tensor,
    jacobian_tokens: int = 32,
    probes: int = 128,
    rtol: float = 1e-5,
    keep: int = 96,
) -> dict[str, object]:
    """JSON-ready: ``update_rank`` over all of ``x``, ``jacobian_rank`` (mean over the first
    ``jacobian_tokens``), and the largest ``keep`` singular values divided by the first."""
    s = singular_values(stacked_deltas(target, x))
    top = float(s[0]) if s.numel() else 0.0
    rank = 0 if top == 0.0 else int((s > rtol * top).sum())
    return {
        "tokens": int(x.size(0)),
        "rtol": rtol,
        "update_rank": rank,
        "jacobian_rank": jacobian_rank(target, x[:jacobian_tokens], probes, rtol),
        "jacobian_tokens": int(min(jacobian_tokens, x.size(0))),
        "singular_values": [float(f"{float(v) / top:.3e}") for v in s[:keep]] if top else [],
    }
