"""SequenceClassifier: masking makes outputs independent of how much padding a batch has."""

from __future__ import annotations

import torch

from chute.models import SequenceClassifier


def test_masked_sequence_model_ignores_extra_padding_and_unmasked_does_not() -> None:
    torch.manual_seed(0)
    batch = {
        "inputs": torch.tensor([[3, 4, 5, 6, 7, 8]]),
        "lengths": torch.tensor([6]),
        "mask": torch.ones(1, 6, dtype=torch.bool),
    }
    padded = {
        "inputs": torch.cat([batch["inputs"], torch.zeros(1, 10, dtype=torch.int64)], dim=1),
        "lengths": batch["lengths"],
        "mask": torch.cat([batch["mask"], torch.zeros(1, 10, dtype=torch.bool)], dim=1),
    }
    for encoder in ("conv", "gru"):
        masked = SequenceClassifier(vocab_size=10, num_classes=3, encoder=encoder).eval()
        torch.testing.assert_close(masked(batch), masked(padded))
        unmasked = SequenceClassifier(vocab_size=10, num_classes=3, encoder=encoder, use_mask=False).eval()
        unmasked.load_state_dict(masked.state_dict())
        assert not torch.allclose(unmasked(batch), unmasked(padded))
