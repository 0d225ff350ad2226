"""``SequenceClassifier``: embedding, a 1-D conv or GRU encoder, masked pooling, for padded dict batches."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from chute.models.eval_loss import EvalLoss
from chute.models.metrics import EpochMetrics, log_epoch_metric
from chute.models.optim import adamw_per_step


class SequenceClassifier(EpochMetrics, L.LightningModule):
    """Classify padded sequences from ``{"inputs", "lengths", "mask", "targets"}`` batches.

    With ``use_mask`` (default) the conv encoder averages embeddings and conv windows of real tokens
    only and adds the log-length from ``lengths``, and the GRU reads packed sequences and stops at
    each one's end. With ``use_mask=False`` the same network treats padding as data (pools over
    every window, reads the GRU's state after the padding): the baseline that shows what the mask
    is worth.

    Args:
        vocab_size: Number of token ids (chute's train app takes it from the DataModule).
        num_classes: Number of classes (likewise).
        pad_id: Padding id (likewise); its embedding is fixed at zero.
        encoder: ``conv`` (two 1-D conv layers, fast on a CPU) or ``gru``.
        embed_dim: Embedding width.
        hidden: Conv channels or GRU hidden size.
        kernel_size: Conv kernel size. Valid convolutions: a sequence shorter than 2 * (kernel_size - 1) + 1
            tokens has no window, and is read by its mean embedding and length alone.
        use_mask: Use ``mask``/``lengths`` (see above).
        lr: AdamW learning rate (one-cycle schedule).
        weight_decay: AdamW weight decay.
        class_weights: Per-class loss weights (the ``loss_weights`` imbalance strategy).

    Example:
        >>> model = SequenceClassifier(vocab_size=10, num_classes=3)
        >>> batch = {"inputs": torch.tensor([[1, 2, 3, 4, 5, 6, 0, 0]]), "lengths": torch.tensor([6]),
        ...          "mask": torch.tensor([[True] * 6 + [False] * 2])}
        >>> model(batch).shape
        torch.Size([1, 3])
    """

    class_weights: torch.Tensor | None  # a buffer: follows the module to its device

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        encoder: Literal["conv", "gru"] = "conv",
        embed_dim: int = 32,
        hidden: int = 64,
        kernel_size: int = 3,
        use_mask: bool = True,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        if encoder not in ("conv", "gru"):
            raise ValueError(f"encoder={encoder!r}: must be 'conv' or 'gru'")
        self.save_hyperparameters()
        self.eval_loss = EvalLoss()  # val/test loss: one sample-weighted mean over all ranks
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        if encoder == "conv":
            self.convs = nn.ModuleList(
                [
                    nn.Conv1d(embed_dim, hidden, kernel_size),
                    nn.Conv1d(hidden, hidden, kernel_size),
                ]
            )
            pooled = embed_dim + hidden + 1
        else:
            self.gru = nn.GRU(embed_dim, hidden, batch_first=True)
            pooled = hidden
        self.head = nn.Sequential(nn.Linear(pooled, hidden), nn.GELU(), nn.Linear(hidden, num_classes))
        self.accuracy = nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")}
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed(batch["inputs"])  # (B, T, E)
        use_mask = self.hparams["use_mask"]
        mask = batch["mask"] if use_mask else torch.ones_like(batch["mask"])
        if self.hparams["encoder"] == "gru":
            return self.head(self._gru(x, batch["lengths"] if use_mask else None))
        # "Valid" convolutions (no zero padding at the ends): output i sees inputs i .. i + k - 1, so
        # it is real iff its last input is, and no boundary effect leaks a sequence's length.
        h = x.transpose(1, 2)
        real = mask.unsqueeze(1).to(h.dtype)
        bag = (h * real).sum(dim=2) / real.sum(dim=2).clamp_min(1)  # mean embedding: what the tokens are
        width = int(self.hparams["kernel_size"])
        short = 2 * (width - 1) + 1 - h.shape[2]  # a batch of short sequences (bucketing groups them)
        if short > 0:  # padded to the two layers' width: no window of it is real, as in a longer batch
            h, mask = F.pad(h, (0, short)), F.pad(mask, (0, short), value=False)
        for conv in self.convs:
            h = F.gelu(conv(h))
            mask = mask[:, width - 1 :]
        keep = mask.unsqueeze(1).to(h.dtype)  # (B, 1, T')
        count = keep.sum(dim=2)  # (B, 1)
        # Mean pooling only: a max over windows grows with their number, a length cue that would let
        # the unmasked baseline cheat.
        mean = (h * keep).sum(dim=2) / count.clamp_min(1)
        if use_mask:
            log_length = torch.log(batch["lengths"].to(h.dtype).unsqueeze(1) / 32.0)  # ~unit scale
        else:
            log_length = torch.zeros_like(count)
        return self.head(torch.cat([bag, mean, log_length], dim=1))

    def _gru(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:
            _, state = self.gru(x)
        else:
            _, state = self.gru(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        return state[-1]

    def epoch_metrics(self, stage: str) -> list[Metric]:
        return [self.accuracy[f"{stage}_acc"], *self.eval_loss.stage(stage)]  # type: ignore[list-item]

    def _step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int = 0) -> torch.Tensor:
        logits = self(batch).float()
        targets = batch["targets"]
        loss = F.cross_entropy(logits, targets, weight=self.class_weights)
        metric = self.accuracy[f"{stage}_acc"]
        assert isinstance(metric, MulticlassAccuracy)
        metric.update(logits, targets)  # logged per epoch: no per-batch value to compute
        self.eval_loss.log(self, stage, loss, len(targets), prog_bar=stage != "train", batch_idx=batch_idx)
        log_epoch_metric(self, f"{stage}/acc", metric, batch_idx, batch_size=len(targets), prog_bar=stage == "val")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch).float().softmax(dim=1)

    def configure_optimizers(self) -> Any:
        return adamw_per_step(self, "one_cycle", pct_start=0.2)
