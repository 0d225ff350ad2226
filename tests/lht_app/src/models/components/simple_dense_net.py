"""A dense net for 1 x 28 x 28 images, in the template's manner: it flattens with ``view``."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class SimpleDenseNet(nn.Module):
    def __init__(
        self, input_size: int = 784, lin1_size: int = 256, lin2_size: int = 256, lin3_size: int = 256,
        output_size: int = 10,
    ) -> None:  # fmt: skip
        super().__init__()
        sizes = [input_size, lin1_size, lin2_size, lin3_size]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(sizes):
            layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU()]
        self.model = nn.Sequential(*layers, nn.Linear(lin3_size, output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, _channels, _width, _height = x.size()  # the template expects image batches
        return self.model(x.view(batch_size, -1))
