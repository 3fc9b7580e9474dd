"""smore_gnn.nn.counting: tree sizes, message widths and the Theorem 3.3 / 3.4 counts."""

from __future__ import annotations

import itertools
import math

import pytest

from smore_gnn.nn.counting import (
    check_layers,
    figure2_values,
    message_dims,
    momor_upper_bound,
    nodes_per_layer,
    num_structures,
    smore_star_structures,
)

# (num_experts, fanout) bottom first; hand-computed (Gamma_S'MoRE, MoMOR bound, S'MoRE*).
HAND = [
    ([4], [2], 6, 6, 6),
    ([4, 4], [2, 2], 216, 66, 126),  # 6 * 6^2; 6 * (C(4,2)+C(4,3)+C(4,4)); 6 * C(7, 2)
    ([4, 4, 4], [2, 2, 2], 279_936, 726, 48_006),  # 6^7; 6 * 11 * 11; 6 * C(127, 2)
    ([3, 4], [2, 1], 12, 12, 12),  # F = [2, 1, 1]: C(3,2) * 4; 4 * C(3,2); 4 * C(3, 1)
    ([5, 3], [2, 2], 300, 75, 165),  # 10^2 * 3; 3 * (10+10+5); 3 * C(11, 2)
    ([2, 2, 2], [1, 1, 1], 8, 8, 8),  # one path: 2 choices per layer
]


@pytest.mark.parametrize("num_experts, fanout, smore, momor, star", HAND)
def test_counts_against_hand_values(num_experts, fanout, smore, momor, star):
    assert num_structures(num_experts, fanout) == smore
    assert momor_upper_bound(num_experts, fanout) == momor
    assert smore_star_structures(num_experts, fanout) == star


def _trees(num_experts, fanout):
    """Every routing tree by plain recursion: one sorted subset per parent, top down."""
    parents = 1
    per_layer = []
    for s, f in zip(reversed(num_experts), reversed(fanout)):
        subsets = list(itertools.combinations(range(s), f))
        per_layer.append(list(itertools.product(subsets, repeat=parents)))
        parents *= f
    return list(itertools.product(*per_layer))


@pytest.mark.parametrize(
    "num_experts, fanout", [([3], [2]), ([3, 2], [2, 1]), ([2, 3], [1, 2]), ([3, 3, 2], [1, 2, 1])]
)
def test_num_structures_equals_a_recursive_enumeration(num_experts, fanout):
    assert num_structures(num_experts, fanout) == len(_trees(num_experts, fanout))


def test_momor_bound_counts_per_layer_unions():
    # Layer 0 under F_1 = 2 parents picking 2 of 4: unions of size 2..4; the top picks 2 of 3.
    unions = {
        frozenset(a) | frozenset(b)
        for a, b in itertools.product(itertools.combinations(range(4), 2), repeat=2)
    }
    assert momor_upper_bound([4, 3], [2, 2]) == math.comb(3, 2) * len(unions) == 3 * 11


def test_nodes_and_message_dims():
    assert nodes_per_layer([2, 3, 2]) == [12, 6, 2, 1]
    assert nodes_per_layer([1]) == [1, 1]
    assert message_dims([4, 4], [8, 8]) == [0, 32, 64]
    assert message_dims([2, 3, 4], [3, 4, 5]) == [0, 6, 18, 38]
    assert message_dims([3, 3, 3], [4, 4, 4], shared_pool=True) == [0, 12, 12, 12]


def test_figure2_reference_values():
    assert figure2_values() == [(1, 6, 6), (2, 216, 66), (3, 279_936, 726)]


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match=r"fanout\[0\] <= num_experts\[0\]"):
        num_structures([3], [4])
    with pytest.raises(ValueError, match="one fanout per expert layer"):
        momor_upper_bound([3, 3], [2])
    with pytest.raises(ValueError, match="one fanout per expert layer"):
        check_layers([], [])
    with pytest.raises(ValueError, match=r"fanout\[1\] >= 1"):
        nodes_per_layer([2, 0])
    with pytest.raises(TypeError, match=r"rank\[0\]"):
        message_dims([2], [2.5])
    with pytest.raises(ValueError, match="shared_pool"):
        message_dims([2, 3], [4, 4], shared_pool=True)
    with pytest.raises(ValueError, match="max_layers"):
        figure2_values(max_layers=0)
