"""The one validated configuration of an S'MoRE adapter (docs/spec.md §2-5).

Layers are 0-indexed from the bottom: layer ``L-1`` is picked by the root, layer 0 holds the
leaves. Every per-layer list (``num_experts``, ``fanout``, ``rank``) is indexed that way.
The config is frozen: derive a changed one with ``dataclasses.replace(cfg, field=value)``.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from smore_gnn.nn import counting

EXPERT_ACTS = ("identity", "tanh", "relu", "prelu")
ROUTER_ACTS = ("relu", "gelu", "tanh", "silu", "identity")
PROPAGATIONS = ("smore", "smore_star", "momor")
GATE_TYPES = ("noisy_topk", "switch", "dense")
INIT_METHODS = ("w_final_zero", "eq_1_layer", "normal")
KEY_INITS = ("normal", "uniform")
BACKENDS = ("gnn", "dense")
SCATTERS = ("native", "torch_scatter")


def _name(value: object) -> str:
    return f"{value!r} of type {type(value).__name__}"


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"SMoREConfig.{name} must be a string, one of {list(options)} (got {_name(value)})"
        )
    if value not in options:
        raise ValueError(f"SMoREConfig.{name} must be one of {list(options)} (got {value!r})")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_list(name: str, value: object) -> list[int]:
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise TypeError(
            f"SMoREConfig.{name} must be a list of ints, one per expert layer (got {value!r})"
        )
    return [int(v) for v in value]


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"SMoREConfig.{name} must be True or False (got {_name(value)}); write a boolean, "
            "not a string or a number (in YAML: true/false without quotes)"
        )


def _real(name: str, value: object, what: str) -> float:
    """A finite float; rejects bool, strings (e.g. YAML's ``1e-3``) and inf/nan."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = "; PyYAML reads 1e-3 as a string: write 1.0e-3" if isinstance(value, str) else ""
        raise TypeError(f"SMoREConfig.{name} must be {what} (got {_name(value)}){hint}")
    if not math.isfinite(value):
        raise ValueError(f"SMoREConfig.{name} must be {what}, a finite number (got {value!r})")
    return float(value)


def _opt(default: object, text: str):
    """A dataclass field with a help text; list defaults get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _ignored(name: str, value: object, why: str) -> None:
    warnings.warn(f"SMoREConfig.{name}={value!r} has no effect: {why}", UserWarning, stacklevel=5)


@dataclass(frozen=True)
class SMoREConfig:
    """Hyper-parameters of one S'MoRE adapter; validated once, in ``__post_init__``.

    Frozen: use ``dataclasses.replace(cfg, rank=[4, 4])`` for a changed copy. Options that a
    setting makes irrelevant (e.g. ``noise_eps`` without the noisy top-k gate) warn.

    Example:
        >>> cfg = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8])
        >>> cfg.message_dims, cfg.nodes_per_layer
        ([0, 32, 64], [4, 2, 1])
    """

    num_experts: list[int] = _opt([4, 4], "s_l: experts per layer, bottom first")
    fanout: list[int] = _opt([2, 2], "f_l: children each parent picks in layer l (top: the root)")
    rank: list[int] = _opt([8, 8], "r_l: rank of each expert in layer l")
    expert_act: str = _opt("tanh", f"sigma, one of {EXPERT_ACTS}")
    propagation: str = _opt("smore", f"rule (docs/spec.md §5), one of {PROPAGATIONS}")
    shared_pool: bool = _opt(False, "S'MoRE#: one expert pool shared by all layers")
    gate_type: str = _opt("noisy_topk", f"one of {GATE_TYPES}")
    router_dim: int = _opt(32, "d_g: router MLP and key width")
    router_act: str = _opt("relu", f"one of {ROUTER_ACTS}")
    down_proj_dim: int | None = _opt(32, "d_down of the token down-projection; None/0: use x")
    balance_loss_weight: float = _opt(1e-2, "w of the balance loss (the authors' scale)")
    noise_eps: float = _opt(1e-2, "eps added to the noise std (noisy_topk only)")
    noise_bias: bool = _opt(
        False,
        "noisy_topk: a bias in the noise projection (the authors' has none; adapters "
        "saved by smore-gnn <= 0.1 have one)",
    )
    init_method: str = _opt(
        "w_final_zero",
        f"one of {INIT_METHODS}: W_proj = 0; Prop. 3.2's construction; or "
        "'normal' (the authors' default: W_proj Kaiming-uniform too)",
    )
    key_init: str = _opt("normal", "router keys: N(0, 1/d_g) or 'uniform' U[0, 1) (the authors')")
    zero_transition_bias: bool = _opt(False, "W_l biases start at zero (as the authors' code)")
    lora_alpha: float | list[float] | None = _opt(
        None, "residual scale c_l = lora_alpha_l / r_l (None: 1)"
    )
    bias: bool = _opt(True, "biases on A, B, W and W_proj")
    backend: str = _opt("gnn", f"forward backend, one of {BACKENDS}")
    scatter: str = _opt("native", f"scatter kernel, one of {SCATTERS}")
    # router learning (bench/router_study.py); the defaults leave the router as above
    logit_scale: float = _opt(1.0, "router logits are multiplied by this (1 / temperature)")
    learn_logit_scale: bool = _opt(False, "learn that scale per layer router, from logit_scale")
    z_loss_weight: float = _opt(0.0, "w_z of the z-loss mean(logsumexp(logits)^2), in balance")
    router_input_norm: bool = _opt(False, "RMS-normalise the router input u (no affine)")
    # an extension, not in the paper (docs/spec.md §12)
    shared_rank: int = _opt(
        0, "rank r_s of a shared LoRA term B_s A_s x added beside W_proj m_root (every token, "
        "no routing): updates then span d_L + r_s output directions, not d_L; 0: off (the paper)"
    )  # fmt: skip

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalisation inside the frozen dataclass

    def __post_init__(self) -> None:
        for name in ("num_experts", "fanout", "rank"):
            self._set(name, _int_list(name, getattr(self, name)))
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
        _choice("key_init", self.key_init, KEY_INITS)
        _choice("backend", self.backend, BACKENDS)
        _choice("scatter", self.scatter, SCATTERS)
        for name in (
            "shared_pool",
            "noise_bias",
            "zero_transition_bias",
            "bias",
            "learn_logit_scale",
            "router_input_norm",
        ):
            _bool(name, getattr(self, name))
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
        dim = self.router_dim
        if not _is_int(dim):
            raise TypeError(f"SMoREConfig.router_dim must be an int (got {_name(dim)})")
        if dim <= 0:
            raise ValueError(f"SMoREConfig.router_dim must be a positive int (got {dim})")
        self._set("router_dim", int(dim))
        rank = self.shared_rank
        if not _is_int(rank) or rank < 0:
            error = ValueError if _is_int(rank) else TypeError
            raise error(f"SMoREConfig.shared_rank must be an int >= 0, 0 for off (got {rank!r})")
        self._set("shared_rank", int(rank))
        self._check_down_proj_dim()
        self._check_floats(n)
        self._warn_ignored()

    def _check_down_proj_dim(self) -> None:
        dim = self.down_proj_dim
        if dim is not None and not _is_int(dim):
            raise TypeError(
                "SMoREConfig.down_proj_dim must be a positive int, or None/0 to route on x "
                f"itself (got {_name(dim)})"
            )
        if dim is not None and dim < 0:
            raise ValueError(
                f"SMoREConfig.down_proj_dim must be a positive int or None (got {dim!r})"
            )
        self._set("down_proj_dim", int(dim) if dim else None)

    def _check_floats(self, n: int) -> None:
        for name, bound in (
            ("balance_loss_weight", ">= 0"),
            ("noise_eps", "> 0"),
            ("logit_scale", "> 0"),
            ("z_loss_weight", ">= 0"),
        ):
            value = _real(name, getattr(self, name), f"a float {bound}")
            if value < 0 or (value == 0 and bound == "> 0"):
                raise ValueError(f"SMoREConfig.{name} must be a float {bound} (got {value})")
            self._set(name, value)
        if self.lora_alpha is None:
            return
        alpha = self.lora_alpha
        alpha = list(alpha) if isinstance(alpha, (list, tuple)) else [alpha] * n
        what = f"None, a positive float, or {n} positive floats, one per layer"
        alpha = [_real("lora_alpha", a, what) for a in alpha]
        if len(alpha) != n or not all(a > 0 for a in alpha):
            raise ValueError(f"SMoREConfig.lora_alpha must be {what} (got {self.lora_alpha!r})")
        self._set("lora_alpha", alpha)

    def _warn_ignored(self) -> None:
        why = f"gate_type={self.gate_type!r} adds no noise"
        if self.gate_type != "noisy_topk" and self.noise_eps != 1e-2:
            _ignored("noise_eps", self.noise_eps, why)
        if self.gate_type != "noisy_topk" and self.noise_bias:
            _ignored("noise_bias", True, why)
        if self.gate_type == "dense" and self.balance_loss_weight != 1e-2:
            _ignored("balance_loss_weight", self.balance_loss_weight, "the dense gate has none")
        if self.backend == "dense" and self.scatter != "native":
            _ignored("scatter", self.scatter, "backend='dense' does not scatter")
        if self.propagation == "momor" and self.expert_act in ("relu", "prelu"):
            _ignored("expert_act", self.expert_act, "propagation='momor' applies no activation")
        if self.zero_transition_bias and (
            not self.bias or self.num_layers == 1 or self.propagation == "momor"
        ):
            _ignored(
                "zero_transition_bias",
                True,
                "there is no W_l bias (bias=False, one layer, or propagation='momor')",
            )

    # ---- derived quantities (the formulas live in smore_gnn.nn.counting) --------------------
    @property
    def num_layers(self) -> int:
        """L, the number of expert layers."""
        return len(self.num_experts)

    @property
    def message_dims(self) -> list[int]:
        """``[d_0, ..., d_L]``: d_0 = 0, d_{l+1} = d_l + s_l r_l (S'MoRE#: d_l = s r, l >= 1)."""
        return counting.message_dims(self.num_experts, self.rank, self.shared_pool)

    @property
    def nodes_per_layer(self) -> list[int]:
        """``[F_0, ..., F_L]``: F_L = 1 (the root), F_l = f_l F_{l+1}."""
        return counting.nodes_per_layer(self.fanout)

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
        return counting.num_structures(self.num_experts, self.fanout)

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
        if not isinstance(data, dict):
            raise TypeError(
                f"SMoREConfig.from_dict expected a dict of fields, got {type(data).__name__} "
                f"{data!r}; pass e.g. {{'rank': [4, 4]}}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SMoREConfig got unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SMoREConfig:
        """A config from JSON text (a ``str`` starting with ``{`` or ``[``) or a JSON file.

        Raises:
            TypeError: If the JSON is not an object (e.g. ``[1, 2]``).
            ValueError: If the text or file is not valid JSON, or a field is unknown/invalid.
            FileNotFoundError: If a path does not exist.
        """
        text, source = str(text_or_path), "JSON text"
        if isinstance(text_or_path, Path) or not text.lstrip().startswith(("{", "[")):
            source, text = f"file {text!r}", Path(text).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"SMoREConfig.from_json: {source} is not valid JSON ({err}); expected a JSON "
                'object of fields, e.g. {"rank": [4, 4]}'
            ) from err
        if not isinstance(data, dict):
            raise TypeError(
                f"SMoREConfig.from_json expected a JSON object of fields, got a "
                f"{type(data).__name__} from {source} ({text.strip()[:60]!r}); "
                'e.g. {"rank": [4, 4]}'
            )
        return cls.from_dict(data)
