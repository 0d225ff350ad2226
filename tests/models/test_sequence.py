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


def _padded_to(inputs: list[list[int]], width: int) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([len(x) for x in inputs])
    return {
        "inputs": torch.tensor([x + [0] * (width - len(x)) for x in inputs]),
        "lengths": lengths,
        "mask": torch.arange(width)[None, :] < lengths[:, None],
    }


def test_a_batch_shorter_than_the_conv_layers_reads_as_it_would_inside_a_longer_batch() -> None:
    """Bucketing puts the shortest sequences together: a batch of at most 3 tokens failed inside
    conv1d ("Kernel size can't be greater than actual input size": two layers of kernel 3 need 5)."""
    torch.manual_seed(0)
    model = SequenceClassifier(vocab_size=10, num_classes=3, kernel_size=3).eval()
    short = [[3, 4, 5], [6], [7, 8]]
    alone = model(_padded_to(short, 3))
    among_longer = model(_padded_to([*short, [1, 2, 3, 4, 5, 6, 7, 8, 9]], 9))[:3]
    torch.testing.assert_close(alone, among_longer)
