"""Routing trees as text: route a prompt through an adapted model and indent one token's tree.

The drawn counterpart is :func:`smore_gnn.viz.draw_routing_tree`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RoutedToken", "format_routing_tree", "route_prompt"]


def format_routing_tree(layer: Any, token: int) -> str:
    """The routed sub-tree of ``token`` in ``layer.last_routing``, indented root first.

    One line per node: ``layer l  expert e  score a``; children (``fanout[l - 1]`` per node)
    follow their parent one indent deeper.
    """
    routing = layer.last_routing
    top = len(routing.experts) - 1

    def lines(l: int, j: int, depth: int) -> list[str]:
        e, a = int(routing.experts[l][token, j]), float(routing.scores[l][token, j])
        out = [f"{'  ' * depth}layer {l}  expert {e}  score {a:.3f}"]
        if l > 0:
            f = routing.fanout[l - 1]
            for child in range(j * f, (j + 1) * f):
                out += lines(l - 1, child, depth + 1)
        return out

    result = ["root"]
    for j in range(routing.experts[top].size(1)):
        result += lines(top, j, 1)
    return "\n".join(result)


@dataclass(frozen=True)
class RoutedToken:
    """One token of a routed prompt: its adapted module, position, text and tree."""

    name: str
    layer: Any
    token: int
    piece: str

    @property
    def text(self) -> str:
        """``"<module>, token <i> ('<piece>'):"`` then the indented tree."""
        return f"{self.name}, token {self.token} ({self.piece!r}):\n" + format_routing_tree(
            self.layer, self.token
        )


def route_prompt(
    model: Any, tokenizer: Any, prompt: str, module: str | int | None = None, token: int = -1
) -> RoutedToken:
    """Run ``prompt`` through an ``SMoREModel`` and pick one adapted module and token.

    Args:
        model: An ``SMoREModel`` (anything with ``adapted_names`` and ``adapters()``).
        tokenizer: Its tokenizer.
        prompt: The text routed.
        module: An index into ``model.adapted_names`` (as int or digit string) or a module
            name; ``None``: the middle one.
        token: Token position (negative counts from the end).

    Raises:
        ValueError: If ``module`` names no adapted module, ``prompt`` has no tokens or
            ``token`` is outside them.
    """
    names = list(model.adapted_names)
    module = len(names) // 2 if module is None else module
    if str(module).lstrip("-").isdigit():
        index = int(module)
        if not -len(names) <= index < len(names):
            raise ValueError(
                f"module index {index} is out of range for {len(names)} adapted modules; use "
                f"0..{len(names) - 1} or a name such as {names[0]!r}"
            )
        name = names[index]
    else:
        name = str(module)
    if name not in names:
        raise ValueError(f"module must be an index or one of {names[:3]}... (got {module!r})")
    batch = tokenizer(prompt, return_tensors="pt")
    ids = batch["input_ids"][0]
    if len(ids) == 0:
        raise ValueError(f"prompt {prompt!r} has no tokens; give a non-empty prompt")
    if not -len(ids) <= token < len(ids):
        raise ValueError(
            f"token {token} is outside the prompt, which has {len(ids)} tokens; use "
            f"0..{len(ids) - 1}, or -1 for the last token"
        )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train(was_training)
    index = token % len(ids)
    piece = tokenizer.decode(ids[index : index + 1])
    return RoutedToken(name, model.adapters()[name], index, piece)
