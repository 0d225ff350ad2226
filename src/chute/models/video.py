"""``ClipClassifier``: a small (2+1)-D convolutional network for ``(clips, labels, videos)`` batches.

Clip accuracy is logged as ``<stage>/acc``; ``<stage>/video_acc`` averages the class probabilities
of each video's clips first (``clips_per_video`` in evaluation), over all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from chute.models.classifier import ImageClassifier
from chute.models.metrics import log_epoch_metric


class R2Plus1D(nn.Module):
    """Blocks of a spatial 1x3x3 then a temporal 3x1x1 convolution (each with BN and ReLU), after
    Tran et al., "A Closer Look at Spatiotemporal Convolutions" (CVPR 2018), small enough for a CPU.

    Takes clips ``(B, T, C, H, W)``; each block halves the frame size, time is kept.

    Args:
        in_channels: Input channels.
        num_classes: Output logits.
        widths: Channels of each block.
        dropout: Dropout before the head.

    Example:
        >>> R2Plus1D(3, 6)(torch.zeros(2, 8, 3, 32, 32)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int] = (24, 48, 96), dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in widths:
            layers += [
                nn.Conv3d(c, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
                nn.BatchNorm3d(width),
                nn.ReLU(inplace=True),
                nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(width),
                nn.ReLU(inplace=True),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips.transpose(1, 2)))  # (B, T, C, H, W) -> (B, C, T, H, W)


class VideoAccuracy(Metric):
    """Accuracy of videos whose prediction is the mean class probability of their clips."""

    full_state_update = False
    videos: list[torch.Tensor]
    probs: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("videos", default=[], dist_reduce_fx="cat")
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor) -> None:
        self.videos.append(videos)
        self.probs.append(probs.float())
        self.labels.append(labels)

    def compute(self) -> torch.Tensor:
        videos = dim_zero_cat(self.videos)
        probs = dim_zero_cat(self.probs)
        labels = dim_zero_cat(self.labels)
        if videos.numel() == 0:
            return torch.tensor(float("nan"))
        ids, slot = torch.unique(videos, return_inverse=True)
        summed = torch.zeros(len(ids), probs.shape[1], device=probs.device).index_add_(0, slot, probs)
        truth = torch.zeros(len(ids), dtype=labels.dtype, device=labels.device).scatter_(0, slot, labels)
        return (summed.argmax(dim=1) == truth).float().mean()


class ClipClassifier(ImageClassifier):
    """Classify normalized float clips ``(B, T, C, H, W)``; batches are ``(clips, labels, videos)``.

    Args:
        num_classes: Number of classes (chute's train app takes it from the DataModule).
        in_channels: Input channels (likewise).
        frames_per_clip: Frames per clip, as the DataModule says (kept in the hyperparameters; the
            network pools over time, so it takes clips of any length).
        widths: Channels of the (2+1)-D blocks.
        dropout: Dropout before the head.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        class_weights: Per-class loss weights (the ``loss_weights`` imbalance strategy).

    Example:
        >>> model = ClipClassifier(num_classes=6)
        >>> model(torch.zeros(2, 4, 3, 32, 32)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        frames_per_clip: int | None = None,
        widths: Sequence[int] = (24, 48, 96),
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__(
            num_classes, in_channels, backbone="small_cnn", lr=lr, weight_decay=weight_decay,
            label_smoothing=label_smoothing, class_weights=class_weights, channels_last=False,
        )  # fmt: skip
        self.save_hyperparameters()
        self.net = R2Plus1D(in_channels, num_classes, tuple(widths), dropout)
        self.video_acc = nn.ModuleDict({stage: VideoAccuracy() for stage in ("val", "test")})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step((batch[0], batch[1]), batch_idx)

    def epoch_metrics(self, stage: str) -> list[Metric]:
        extra = [self.video_acc[stage]] if stage in self.video_acc else []
        return [*super().epoch_metrics(stage), *extra]  # type: ignore[list-item]

    def _eval_step(self, batch: Any, stage: str, metric: Any, batch_idx: int = 0) -> torch.Tensor | None:
        logits = super()._eval_step((batch[0], batch[1]), stage, metric, batch_idx)
        if logits is not None and len(batch) > 2:
            video_acc = self.video_acc[stage]
            assert isinstance(video_acc, VideoAccuracy)
            video_acc.update(logits.float().softmax(dim=1), batch[1], batch[2])
            log_epoch_metric(self, f"{stage}/video_acc", video_acc, batch_idx, batch_size=len(batch[1]))
        return logits
