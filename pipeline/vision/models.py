"""Classifier builders: ``fn(dataloaders, seed, *, ...config) -> Classifier``.

A classifier maps (batch, C, H, W) images to (batch, classes) logits and exposes its
intermediate representation (``features``), which the similarity regularizer compares with
neural similarity and the optional response head maps to neural responses (co-training).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline import identity
from pipeline.sysid.training import set_seed


class DigitCNN(nn.Module):
    """conv-ReLU-pool blocks, a linear classifier of the last block's flattened maps; an optional response head.

    Parameters
    ----------
    image_shape : (C, H, W) of the images
    channels : output channels of each conv block (3x3 convs, 2x2 max pooling after each)
    n_classes : number of classes
    n_neurons : neurons of the response head (0: no head)
    head_layer : index of the block whose output the response head and ``features`` read

    ``forward(x)`` returns (B, n_classes) logits; ``features(x)`` the (B, C, H', W') output of
    block ``head_layer``; ``responses(x)`` the head's (B, n_neurons) prediction.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: list[int],
        n_classes: int,
        n_neurons: int = 0,
        head_layer: int = 0,
    ):
        super().__init__()
        if not channels:
            raise ValueError("DigitCNN needs at least one conv block (channels is empty)")
        if not 0 <= head_layer < len(channels):
            raise ValueError(f"head_layer = {head_layer} (expected 0..{len(channels) - 1})")
        blocks, c, (height, width) = [], image_shape[0], image_shape[1:]
        for out in channels:
            blocks.append(nn.Sequential(nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)))
            c, height, width = out, -(-height // 2), -(-width // 2)
        self.blocks = nn.ModuleList(blocks)
        self.head_layer = head_layer
        self.classifier = nn.Linear(c * height * width, n_classes)
        self.response_head = None
        if n_neurons:
            width = channels[head_layer]
            self.response_head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, n_neurons))

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.head_layer:
                feature = x
        return self.classifier(x.flatten(1)), feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W') output of block ``head_layer``."""
        return self._run(x)[1]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both, from one pass."""
        return self._run(x)

    def responses(self, features: torch.Tensor) -> torch.Tensor:
        """The response head's (B, n_neurons) prediction from ``features``."""
        if self.response_head is None:
            raise ValueError("this classifier has no response head (built with response_head=False)")
        return self.response_head(features)


class DigitMLP(nn.Module):
    """A small fully connected classifier (the students of distillation): no built-in equivariance."""

    def __init__(self, n_inputs: int, hidden: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _shapes(dataloaders: dict) -> tuple[tuple[int, int, int], int, int]:
    """(image shape (C, H, W), number of classes, number of neurons of the targets) of the train tier."""
    train = dataloaders.get("train") if isinstance(dataloaders, dict) else None
    if train is None:
        raise ValueError("dataloaders has no 'train' loader (expected stimulus_split loaders)")
    arrays = train.dataset.arrays
    n_classes = int(max(int(loader.dataset.arrays["labels"].max()) for loader in dataloaders.values())) + 1
    n_neurons = int(arrays["targets"].shape[1]) if "targets" in arrays else 0
    return tuple(arrays["images"].shape[1:]), n_classes, n_neurons


@identity.register("classifier", "digit_cnn")
def digit_cnn(
    dataloaders: dict,
    seed: int,
    *,
    channels: list[int] = (8, 16),  # type: ignore[assignment]
    response_head: bool = False,
    head_layer: int = 0,
) -> DigitCNN:
    """A small CNN classifier; ``response_head``: a linear readout of block ``head_layer`` to the targets' neurons."""
    shape, n_classes, n_neurons = _shapes(dataloaders)
    if response_head and not n_neurons:
        raise ValueError("digit_cnn: response_head=True but the loaders carry no neural targets")
    set_seed(seed)
    return DigitCNN(shape, list(channels), n_classes, n_neurons if response_head else 0, head_layer)


@identity.register("classifier", "digit_mlp")
def digit_mlp(dataloaders: dict, seed: int, *, hidden: int = 32) -> DigitMLP:
    """A one-hidden-layer MLP classifier (a small student)."""
    shape, n_classes, _ = _shapes(dataloaders)
    set_seed(seed)
    return DigitMLP(shape[0] * shape[1] * shape[2], hidden, n_classes)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
