"""What mask validation can and cannot catch (docs/failure_behaviour.md: cannot be detected)."""

from __future__ import annotations

import pytest
import torch

from smore_gnn.hf.mask import token_mask
from smore_gnn.nn.masks import flat_mask

RIGHT_PADDED = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]])  # [batch 3, seq 3], not symmetric


def test_a_transposed_mask_is_rejected_when_batch_differs_from_seq():
    ids, mask = torch.zeros(2, 3, dtype=torch.long), RIGHT_PADDED[:2]  # [2, 3]
    with pytest.raises(ValueError, match=r"not transposed"):
        token_mask({"input_ids": ids, "attention_mask": mask.t()})
    with pytest.raises(ValueError, match=r"not a transposed"):
        flat_mask(mask.t(), torch.Size([2, 3]))


def test_a_transposed_mask_passes_unnoticed_when_batch_equals_seq():
    ids, mask = torch.zeros(3, 3, dtype=torch.long), RIGHT_PADDED
    got = token_mask({"input_ids": ids, "attention_mask": mask.t()})
    assert got.shape == (3, 3) and not torch.equal(got, mask.bool())  # accepted, and wrong
    assert not torch.equal(flat_mask(mask.t(), torch.Size([3, 3])), mask.reshape(-1).bool())
    # so is any flat mask: its order cannot be checked
    assert torch.equal(flat_mask(mask.t().reshape(-1), torch.Size([3, 3])).reshape(3, 3), got)
    # the check docs/failure_behaviour.md suggests for hand-built masks catches it
    ids = torch.tensor([[5, 6, 7], [5, 6, 0], [8, 9, 0]])  # pad id 0
    assert torch.equal(mask.bool(), ids != 0) and not torch.equal(mask.t().bool(), ids != 0)
