"""What the router decided for ``N`` tokens: :class:`RoutingResult` (docs/spec.md §3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from smore_gnn.nn.gates import GateOutput


class RoutingResult:
    """The router's decisions for ``N`` tokens, per layer ``l`` (bottom first).

    ``experts[l]`` and ``scores[l]`` are ``[N, F_l]``; node ``j`` of layer ``l`` hangs under
    node ``j // f_l`` of layer ``l + 1`` (the root for the top layer).

    The statistics (``balance_loss``, ``load``, ``importance``, ``layer_losses``) are either
    given or, with ``stats`` (a no-argument callable returning each layer's
    :class:`~smore_gnn.nn.gates.GateOutput`, bottom first), computed on first access: routing
    without autograd (:mod:`smore_gnn.nn.routing`) does not pay for statistics no one reads.
    """

    def __init__(
        self,
        experts: list[Tensor],  # per layer: [N, F_l] long
        scores: list[Tensor],  # per layer: [N, F_l] float32, alpha of the edge to the parent
        fanout: list[int],
        balance_loss: Tensor | None = None,  # [] summed over layers
        load: list[Tensor] | None = None,  # per layer: [s_l] picks (valid tokens)
        importance: list[Tensor] | None = None,  # per layer: [s_l] summed scores
        layer_losses: list[Tensor] | None = None,  # per layer: []
        stats: Callable[[], list[GateOutput]] | None = None,
    ):
        if balance_loss is None and stats is None:
            raise ValueError("RoutingResult needs balance_loss or stats (got neither)")
        self.experts, self.scores, self.fanout = experts, scores, fanout
        self._stats = stats
        self._balance_loss = balance_loss
        self._load, self._importance = list(load or []), list(importance or [])
        self._layer_losses = list(layer_losses or [])

    def _resolve(self) -> None:
        if self._stats is None:
            return
        outs, self._stats = self._stats(), None
        self._load = [o.load for o in outs]
        self._importance = [o.importance for o in outs]
        self._layer_losses = [o.loss for o in outs]
        self._balance_loss = torch.stack(self._layer_losses).sum()

    @property
    def is_lazy(self) -> bool:
        """Whether the statistics are still to be computed (on first access)."""
        return self._stats is not None

    @property
    def balance_loss(self) -> Tensor:
        """``[]`` balance loss summed over the layers."""
        self._resolve()
        return self._balance_loss

    @property
    def load(self) -> list[Tensor]:
        """Per layer ``[s_l]`` hard picks per expert over the valid tokens."""
        self._resolve()
        return self._load

    @property
    def importance(self) -> list[Tensor]:
        """Per layer ``[s_l]`` summed gate scores per expert over the valid tokens."""
        self._resolve()
        return self._importance

    @property
    def layer_losses(self) -> list[Tensor]:
        """Per layer ``[]`` weighted balance loss."""
        self._resolve()
        return self._layer_losses

    def detached(self) -> RoutingResult:
        """A copy whose scores and statistics are detached from the autograd graph."""
        return RoutingResult(
            experts=self.experts,
            scores=[s.detach() for s in self.scores],
            fanout=self.fanout,
            balance_loss=self.balance_loss.detach(),
            load=[t.detach() for t in self.load],
            importance=[t.detach() for t in self.importance],
            layer_losses=[t.detach() for t in self.layer_losses],
        )

    @property
    def num_tokens(self) -> int:
        return self.experts[0].size(0)
