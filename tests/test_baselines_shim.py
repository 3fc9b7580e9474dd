"""smore_gnn.baselines (deprecated): each 0.1 name warns and returns what the registry returns."""

from __future__ import annotations

import pytest

from smore_gnn import baselines
from smore_gnn.methods import get_method, save_any, smore_paper_config, trainable_parameters
from smore_gnn.testing import tiny_llama


def _tiny():
    return tiny_llama(hidden_size=32, intermediate_size=64)[0]


@pytest.mark.parametrize(
    ("old", "new", "args"),
    [
        ("count_adapter_parameters", "count", ("smore", None, smore_paper_config())),
        ("match_parameters", "match_budget", ("lora", None, 5000)),
        ("apply_method", "build", ("lora", 2, ["gate_proj"])),
    ],
)
def test_by_name_functions_warn_and_delegate(old, new, args):
    method, *rest = args
    with pytest.warns(DeprecationWarning, match=rf"baselines\.{old} is deprecated.*\.{new}\("):
        got = getattr(baselines, old)(method, _tiny(), *rest)
    want = getattr(get_method(method), new)(_tiny(), *rest)
    if new == "build":
        assert trainable_parameters(got) == trainable_parameters(want) > 0
    else:
        assert got == want
    assert getattr(baselines, old).__name__ == old


def test_by_name_functions_pass_keywords_through():
    with pytest.warns(DeprecationWarning):
        got = baselines.match_parameters("lora", _tiny(), None, budget=5000, max_rank=3)
    assert got == get_method("lora").match_budget(_tiny(), None, 5000, max_rank=3)
    assert got.rank <= 3


def test_load_method_adapter_warns_and_loads(tmp_path):
    adapted = get_method("lora").build(_tiny(), 2)
    save_any(adapted, tmp_path / "lora")
    with pytest.warns(DeprecationWarning, match="load_method_adapter is deprecated"):
        frozen = baselines.load_method_adapter(_tiny(), tmp_path / "lora")
    assert trainable_parameters(frozen) == 0
    with pytest.warns(DeprecationWarning):
        loaded = baselines.load_method_adapter(_tiny(), tmp_path / "lora", trainable=True)
    assert trainable_parameters(loaded) == trainable_parameters(adapted)
