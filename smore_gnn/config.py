"""The one validated configuration of an S'MoRE adapter (SPEC §2-5).

Layers are 0-indexed from the bottom: layer ``L-1`` is picked by the root, layer 0 holds the
leaves. Every per-layer list (``num_experts``, ``fanout``, ``rank``) is indexed that way.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

EXPERT_ACTS = ("identity", "tanh", "relu", "prelu")
ROUTER_ACTS = ("relu", "gelu", "tanh", "silu", "identity")
PROPAGATIONS = ("smore", "smore_star", "momor")
GATE_TYPES = ("noisy_topk", "switch", "dense")
INIT_METHODS = ("w_final_zero", "eq_1_layer")
BACKENDS = ("gnn", "dense")
SCATTERS = ("native", "torch_scatter")


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"SMoREConfig.{name} must be one of {list(options)} (got {value!r})")


def _int_list(name: str, value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(
            f"SMoREConfig.{name} must be a list of ints, one per expert layer (got {value!r})"
        )
    return list(value)


@dataclass
class SMoREConfig:
    """Hyper-parameters of one S'MoRE adapter; validated once, in ``__post_init__``.

    Example:
        >>> cfg = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8])
        >>> cfg.message_dims, cfg.nodes_per_layer
        ([0, 32, 64], [4, 2, 1])
    """

    num_experts: list[int] = field(
        default_factory=lambda: [4, 4], metadata={"help": "s_l: experts per layer, bottom first"}
    )
    fanout: list[int] = field(
        default_factory=lambda: [2, 2],
        metadata={"help": "f_l: children each parent picks in layer l (top: picked by the root)"},
    )
    rank: list[int] = field(
        default_factory=lambda: [8, 8], metadata={"help": "r_l: rank of each expert in layer l"}
    )
    expert_act: str = field(default="tanh", metadata={"help": f"sigma, one of {EXPERT_ACTS}"})
    propagation: str = field(
        default="smore", metadata={"help": f"propagation rule (SPEC §5), one of {PROPAGATIONS}"}
    )
    shared_pool: bool = field(
        default=False, metadata={"help": "S'MoRE#: one expert pool shared by all layers"}
    )
    gate_type: str = field(default="noisy_topk", metadata={"help": f"one of {GATE_TYPES}"})
    router_dim: int = field(default=32, metadata={"help": "d_g: router MLP and key width"})
    router_act: str = field(default="relu", metadata={"help": f"one of {ROUTER_ACTS}"})
    down_proj_dim: int | None = field(
        default=32, metadata={"help": "d_down of the token down-projection; None/0: use x"}
    )
    balance_loss_weight: float = field(default=1e-2, metadata={"help": "w of the balance loss"})
    noise_eps: float = field(default=1e-2, metadata={"help": "eps added to the noise std"})
    init_method: str = field(default="w_final_zero", metadata={"help": f"one of {INIT_METHODS}"})
    lora_alpha: float | list[float] | None = field(
        default=None, metadata={"help": "residual scale c_l = lora_alpha_l / r_l (None: 1)"}
    )
    bias: bool = field(default=True, metadata={"help": "biases on A, B, W and W_proj"})
    backend: str = field(default="gnn", metadata={"help": f"forward backend, one of {BACKENDS}"})
    scatter: str = field(default="native", metadata={"help": f"scatter kernel, one of {SCATTERS}"})

    def __post_init__(self) -> None:
        self.num_experts = _int_list("num_experts", self.num_experts)
        self.fanout = _int_list("fanout", self.fanout)
        self.rank = _int_list("rank", self.rank)
        n = len(self.num_experts)
        if n == 0:
            raise ValueError("SMoREConfig.num_experts must name at least one layer (got [])")
        for name in ("fanout", "rank"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"SMoREConfig.{name} has {len(getattr(self, name))} entries but num_experts "
                    f"has {n}; give one value per expert layer"
                )
        for l, (s, f, r) in enumerate(zip(self.num_experts, self.fanout, self.rank)):
            if s <= 0:
                raise ValueError(f"SMoREConfig.num_experts[{l}] must be >= 1 (got {s})")
            if r <= 0:
                raise ValueError(f"SMoREConfig.rank[{l}] must be >= 1 (got {r})")
            if not 1 <= f <= s:
                raise ValueError(
                    f"SMoREConfig.fanout[{l}] must lie in [1, num_experts[{l}]={s}] (got {f}); "
                    "a parent cannot pick more children than the layer has experts"
                )
        _choice("expert_act", self.expert_act, EXPERT_ACTS)
        _choice("router_act", self.router_act, ROUTER_ACTS)
        _choice("propagation", self.propagation, PROPAGATIONS)
        _choice("gate_type", self.gate_type, GATE_TYPES)
        _choice("init_method", self.init_method, INIT_METHODS)
        _choice("backend", self.backend, BACKENDS)
        _choice("scatter", self.scatter, SCATTERS)
        if self.gate_type == "dense" and self.fanout != self.num_experts:
            raise ValueError(
                f"SMoREConfig.gate_type='dense' routes to every expert, so fanout must equal "
                f"num_experts (got fanout={self.fanout}, num_experts={self.num_experts}); "
                "set fanout=num_experts or choose gate_type='noisy_topk'/'switch'"
            )
        if self.shared_pool and (len(set(self.num_experts)) > 1 or len(set(self.rank)) > 1):
            raise ValueError(
                "SMoREConfig.shared_pool=True needs the same num_experts and rank in every layer "
                f"(got num_experts={self.num_experts}, rank={self.rank})"
            )
        if not isinstance(self.router_dim, int) or self.router_dim <= 0:
            raise ValueError(
                f"SMoREConfig.router_dim must be a positive int (got {self.router_dim})"
            )
        if self.down_proj_dim == 0:
            self.down_proj_dim = None
        if self.down_proj_dim is not None and (
            not isinstance(self.down_proj_dim, int) or self.down_proj_dim < 0
        ):
            raise ValueError(
                "SMoREConfig.down_proj_dim must be a positive int or None "
                f"(got {self.down_proj_dim!r})"
            )
        if not (
            isinstance(self.balance_loss_weight, (int, float)) and self.balance_loss_weight >= 0
        ):
            raise ValueError(
                "SMoREConfig.balance_loss_weight must be a float >= 0 "
                f"(got {self.balance_loss_weight!r})"
            )
        if not self.noise_eps > 0:
            raise ValueError(f"SMoREConfig.noise_eps must be > 0 (got {self.noise_eps})")
        if self.lora_alpha is not None:
            alpha = self.lora_alpha
            alpha = [alpha] * n if isinstance(alpha, (int, float)) else list(alpha)
            if len(alpha) != n or not all(isinstance(a, (int, float)) and a > 0 for a in alpha):
                raise ValueError(
                    f"SMoREConfig.lora_alpha must be None, a positive float, or {n} positive "
                    f"floats, one per layer (got {self.lora_alpha!r})"
                )
            self.lora_alpha = [float(a) for a in alpha]

    # ---- derived quantities -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, the number of expert layers."""
        return len(self.num_experts)

    @property
    def message_dims(self) -> list[int]:
        """``[d_0, ..., d_L]``: d_0 = 0, d_{l+1} = d_l + s_l r_l (S'MoRE#: d_l = s r, l >= 1)."""
        if self.shared_pool:
            return [0] + [self.num_experts[0] * self.rank[0]] * self.num_layers
        dims = [0]
        for s, r in zip(self.num_experts, self.rank):
            dims.append(dims[-1] + s * r)
        return dims

    @property
    def nodes_per_layer(self) -> list[int]:
        """``[F_0, ..., F_L]``: F_L = 1 (the root), F_l = f_l F_{l+1}."""
        nodes = [1]
        for f in reversed(self.fanout):
            nodes.insert(0, f * nodes[0])
        return nodes

    @property
    def residual_scales(self) -> list[float]:
        """c_l = lora_alpha_l / r_l, or 1 when ``lora_alpha`` is None."""
        if self.lora_alpha is None:
            return [1.0] * self.num_layers
        return [a / r for a, r in zip(self.lora_alpha, self.rank)]

    @property
    def router_input_dims(self) -> list[int]:
        """Router input width per layer given the token width d_u (added by the caller)."""
        return [(self.num_layers - 1 - l) * self.router_dim for l in range(self.num_layers)]

    @property
    def num_structures(self) -> int:
        """Gamma_S'MoRE = prod_l C(s_l, f_l)^{F_{l+1}}: routing trees the router can produce."""
        nodes = self.nodes_per_layer
        return math.prod(
            math.comb(s, f) ** nodes[l + 1]
            for l, (s, f) in enumerate(zip(self.num_experts, self.fanout))
        )

    def num_parameters(self, in_features: int, out_features: int) -> int:
        """Trainable parameters of one adapted ``in_features -> out_features`` linear (SPEC §8)."""
        from smore_gnn.accounting import count_parameters

        return count_parameters(self, in_features, out_features)["total"]

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> SMoREConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SMoREConfig got unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SMoREConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
