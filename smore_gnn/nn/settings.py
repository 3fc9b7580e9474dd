"""Speed choices of an adapter layer, as one frozen object per layer (no process-wide switch).

None of these changes what the layer computes beyond float rounding; they choose how. The
defaults suit every device; :meth:`SpeedSettings.for_device` gives the ones measured for a
device type. Set them per layer (``SMoRELinear(base, config, settings=...)`` or
``layer.settings = ...``) or for every adapted layer of a model
(``SMoREModel.set_speed_settings``, where the model offers it).
"""

from __future__ import annotations

from dataclasses import dataclass

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
            ``2 sigmoid(2x) - 1`` in place on the unfused path (faster on CPUs, within 2e-7);
            ``None``: never.
        small_max_tokens: up to this many tokens an eval forward without autograd (a decode
            step) takes the fewest-operations path (:mod:`smore_gnn.nn.decode`); 0: never.
    """

    message_passing: str = "fused"
    fast_tanh_min_numel: int | None = 4096
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
        small = self.small_max_tokens
        if isinstance(small, bool) or not isinstance(small, int) or small < 0:
            raise ValueError(f"SpeedSettings.small_max_tokens must be an int >= 0 (got {small!r})")

    @classmethod
    def for_device(cls, device_type: str) -> SpeedSettings:
        """The settings measured for ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        if device_type == "cpu":
            return cls()
        return cls(fast_tanh_min_numel=None)  # the sigmoid identity only pays on CPUs
