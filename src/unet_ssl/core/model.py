"""The paper's U-Net: a 4-level encoder (32/64/128/256 channels, ReLU), a transposed-convolution
decoder with optional skip connections, and the SimCLR projection heads.

Depends on torch alone, so it runs wherever torch does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    in_channels: int = 3
    out_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128, 256)
    skip_connections: bool = True

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{**d, "widths": tuple(d["widths"])})


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """Returns the feature map of every level; the last one is the bottleneck."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        chans = (in_channels, *widths)
        self.levels = nn.ModuleList(conv_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        return features


class Decoder(nn.Module):
    """Upsamples with transposed convolutions; concatenates encoder features only when skips are on."""

    def __init__(self, widths: tuple[int, ...], skip_connections: bool):
        super().__init__()
        self.skip_connections = skip_connections
        deep_to_shallow = widths[::-1]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(deep_to_shallow[:-1], deep_to_shallow[1:])
        )
        self.blocks = nn.ModuleList(
            conv_block(2 * b if skip_connections else b, b) for b in deep_to_shallow[1:]
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(features[:-1])):
            x = up(x)
            x = block(torch.cat([x, skip], dim=1) if self.skip_connections else x)
        return x


class UNet(nn.Module):
    """Encoder + decoder + 1x1 head; `out_channels` is 3 classes for segmentation or 3 colours for MAE."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.in_channels, config.widths)
        self.decoder = Decoder(config.widths, config.skip_connections)
        self.head = nn.Conv2d(config.widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        downsampling = 2 ** (len(self.config.widths) - 1)
        if x.shape[-1] % downsampling or x.shape[-2] % downsampling:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {downsampling}")
        return self.head(self.decoder(self.encoder(x)))


def projection_mlp(in_dim: int, hidden_dim: int = 256, out_dim: int = 128) -> nn.Sequential:
    """SimCLR's projection: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class ProjectionHead(nn.Module):
    """SimCLR's 2-layer MLP on globally pooled encoder features.

    `multi_level=False` pools the bottleneck only (SimCLR's choice); `True` concatenates the pooled
    features of every encoder level (the paper's future-work variant). `pixels=True` adds a second MLP,
    `pixel_mlp`, for single pixels of the decoder's last features (dense contrastive pretraining).
    """

    def __init__(self, widths: tuple[int, ...], multi_level: bool = False, hidden_dim: int = 256, out_dim: int = 128,
                 pixels: bool = False):
        super().__init__()
        self.multi_level = multi_level
        self.mlp = projection_mlp(sum(widths) if multi_level else widths[-1], hidden_dim, out_dim)
        self.pixel_mlp = projection_mlp(widths[0], hidden_dim, out_dim) if pixels else None

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        chosen = features if self.multi_level else features[-1:]
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in chosen], dim=1)
        return self.mlp(pooled)


def freeze_encoder(model: UNet, frozen: bool = True) -> None:
    """Stops (or, with `frozen=False`, restores) gradients to the encoder; a frozen encoder keeps its
    batch-norm statistics fixed.

    Call `model.train()` through `train_mode` below so a frozen encoder stays in eval mode.
    """
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        model.encoder.eval()


def train_mode(model: UNet, encoder_frozen: bool) -> None:
    """Puts the model in training mode, leaving a frozen encoder's normalisation statistics untouched."""
    model.train()
    if encoder_frozen:
        model.encoder.eval()
