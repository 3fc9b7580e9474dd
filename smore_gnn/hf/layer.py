"""``AdaptedLinear``: a frozen base linear with its named S'MoRE adapters, as peft holds them.

As a peft tuner layer (``peft.tuners.lora.layer.Linear``) does, the module at an adapted slot
wraps the ``base_layer`` and keeps every adapter of that slot in a ``ModuleDict`` by name,
with the active name and a ``disable_adapters`` flag beside it. Switching, disabling and
deleting adapters change that state; nothing in the model's module tree is swapped.

Each adapter is an :class:`~smore_gnn.nn.layer.SMoRELinear`, whose forward returns
``base_layer(x) + W_proj m_root(x)``; the wrapper calls it with the padding mask of the model
forward in progress (:func:`smore_gnn.hf.mask.current_mask`) as its ``attention_mask``.
"""

from __future__ import annotations

from torch import Tensor, nn

from smore_gnn.hf.mask import current_mask
from smore_gnn.nn.layer import SMoRELinear


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` plus named S'MoRE adapters; the active one adds its delta.

    Args:
        base_layer (nn.Linear): the frozen map ``W0`` (kept, not copied).
        mask_owner (object, optional): the key under which the owning ``SMoREModel`` publishes
            each forward's padding mask (default: ``None``, no mask is read).

    Attributes:
        adapters (nn.ModuleDict): ``{adapter name: SMoRELinear}``.
        active_adapter (str | None): the adapter the forward applies; a name this slot does not
            hold (an adapter that targets other modules) gives the base output.
        disable_adapters (bool): ``True``: the forward returns ``base_layer(x)``.
    """

    def __init__(self, base_layer: nn.Linear, mask_owner: object | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"AdaptedLinear wraps an nn.Linear (got {type(base_layer).__name__})")
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False
        self.mask_owner = mask_owner

    in_features = property(lambda self: self.base_layer.in_features, doc="Input width.")
    out_features = property(lambda self: self.base_layer.out_features, doc="Output width.")
    weight = property(lambda self: self.base_layer.weight, doc="The base weight ``W0``.")
    bias = property(lambda self: self.base_layer.bias, doc="The base bias.")

    def add_adapter(self, name: str, adapter: SMoRELinear) -> None:
        """Hold ``adapter`` (built on this ``base_layer``) under ``name``; frozen, not active."""
        if adapter.base_layer is not self.base_layer:
            raise ValueError(
                f"Adapter {name!r} was built on another base layer; build it as "
                "SMoRELinear(wrapper.base_layer, config)"
            )
        # The base weight is registered once, under this wrapper: the adapter keeps it as a
        # plain attribute (its forward still reads self.base_layer), so state_dict, .to() and
        # sharding see one copy however many adapters the slot holds.
        delattr(adapter, "base_layer")
        object.__setattr__(adapter, "base_layer", self.base_layer)
        adapter.requires_grad_(False)
        adapter.train(self.training)
        self.adapters[name] = adapter

    def set_adapter(self, name: str, trainable: bool = True) -> None:
        """Make ``name`` active (trainable if ``trainable``); every other adapter is frozen."""
        for key, adapter in self.adapters.items():
            adapter.requires_grad_(trainable and key == name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Drop the adapter ``name`` (nothing happens if this slot does not hold it)."""
        if name in self.adapters:
            del self.adapters[name]

    def forward(self, x: Tensor) -> Tensor:
        """``base_layer(x)`` plus the active adapter's delta (none when disabled or absent)."""
        name = self.active_adapter
        if self.disable_adapters or name is None or name not in self.adapters:
            return self.base_layer(x)
        mask = current_mask(self.mask_owner)  # [batch, seq] bool or None
        if mask is not None and x.dim() == 2:
            mask = mask.reshape(-1)  # the model flattened its tokens row-major: [N]
        return self.adapters[name](x, attention_mask=mask)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, disable_adapters={self.disable_adapters}"
