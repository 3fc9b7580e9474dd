"""Speed choices of an adapter layer, as one frozen object per layer (no process-wide switch).

None of these changes what the layer computes beyond float rounding; they choose how. The
defaults suit every device; :meth:`SpeedSettings.for_device` gives the ones measured for a
device type, and a layer built without settings takes those of its base layer's device. Set
them per layer (``SMoRELinear(base, config, settings=...)`` or ``layer.settings = ...``).
"""

from __future__ import annotations

from dataclasses import dataclass

from smore_gnn.nn.experts import ResidualCosts

MESSAGE_PASSING = ("fused", "edges")


@dataclass(frozen=True)
class SpeedSettings:
    """How an ``SMoRELinear`` computes its delta.

    Args:
        message_passing: ``"fused"`` (default): every hop of the routed tree runs as one
            :func:`~smore_gnn.nn.fused.tree_hop` through ``SMoREConv.message_and_aggregate``
            on a destination-sorted ``EdgeIndex``; ``"edges"``: one message per edge
            (``message``, ``aggregate``, ``update``), the readable path kept as an oracle.
        fast_tanh_min_numel: from this many float32 CPU elements on, ``tanh`` runs as
            ``2 sigmoid(2x) - 1`` (faster on CPUs, within 2e-7); ``None``: never.
            (default: 4096)
        transposed_softmax: short softmax rows on the transposed kernel (faster on CPUs);
            ``None``: on CPU tensors only. (default: ``None``)
        residual_costs: the cost constants that choose the residual path of the ``"edges"``
            propagation (:class:`~smore_gnn.nn.experts.ResidualCosts`); ``None``: the
            device's. (default: ``None``)
        small_max_tokens: up to this many tokens an eval forward without autograd (a decode
            step) takes the fewest-operations path (:mod:`smore_gnn.nn.decode`); 0: never.
            (default: 64)
    """

    message_passing: str = "fused"
    fast_tanh_min_numel: int | None = 4096
    transposed_softmax: bool | None = None
    residual_costs: ResidualCosts | None = None
    small_max_tokens: int = 64

    def __post_init__(self) -> None:
        if self.message_passing not in MESSAGE_PASSING:
            raise ValueError(
                f"SpeedSettings.message_passing must be one of {list(MESSAGE_PASSING)} "
                f"(got {self.message_passing!r})"
            )
        numel = self.fast_tanh_min_numel
        if numel is not None and (isinstance(numel, bool) or not isinstance(numel, int)):
            raise TypeError(
                f"SpeedSettings.fast_tanh_min_numel must be an int or None (got {numel!r})"
            )
        if self.transposed_softmax not in (None, True, False):
            raise TypeError(
                "SpeedSettings.transposed_softmax must be True, False or None "
                f"(got {self.transposed_softmax!r})"
            )
        costs = self.residual_costs
        if costs is not None and not isinstance(costs, ResidualCosts):
            raise TypeError(
                f"SpeedSettings.residual_costs must be a ResidualCosts or None (got {costs!r})"
            )
        small = self.small_max_tokens
        if isinstance(small, bool) or not isinstance(small, int) or small < 0:
            raise ValueError(f"SpeedSettings.small_max_tokens must be an int >= 0 (got {small!r})")

    @classmethod
    def for_device(cls, device_type: str) -> SpeedSettings:
        """The settings measured for ``device_type`` (``"cpu"``, ``"cuda"``, ...): the CPU
        tricks (sigmoid ``tanh``, transposed softmax) only on the CPU."""
        if device_type == "cpu":
            return cls()
        return cls(fast_tanh_min_numel=None, transposed_softmax=False)
