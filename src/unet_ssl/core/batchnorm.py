"""Re-estimating batch-norm statistics on the fine-tuning photos.

A pretrained encoder carries running means and variances gathered on its pretraining inputs (colour-jittered
crops for SimCLR, masked photos for the autoencoders) and a random encoder carries none at all (mean 0, variance 1).
A frozen encoder keeps them for the whole of fine-tuning. Recomputing them once, on the photos it will segment,
is the classic fix (Ioffe & Szegedy 2015, section 3.1: inference statistics are population statistics of the data
the network sees; Li et al. 2016, "Revisiting Batch Normalization for Practical Domain Adaptation", AdaBN)."""
from __future__ import annotations

import torch

from unet_ssl.core import augment
from unet_ssl.core.runtime import Runtime

BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_stats(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int) -> int:
    """Replaces the running mean and variance of every batch-norm layer of `model` by their average over
    `images` (uint8, N x 3 x H x W) in batches of `batch_size`, as the training loop feeds them (no augmentation).
    Weights, biases and the model's train/eval modes are left as they were. Returns the number of layers."""
    layers = batchnorm_layers(model)
    saved = [(layer, layer.momentum, layer.training) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch counts alike
        layer.train()
    for start in range(0, len(images), batch_size):
        x = runtime.batch(augment.to_float(images[start:start + batch_size]))
        with runtime.autocast():
            model(x)
    for layer, momentum, training in saved:
        layer.momentum = momentum
        layer.train(training)
    return len(layers)
