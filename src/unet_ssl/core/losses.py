"""Loss functions as pure functions of tensors: NT-Xent (SimCLR), soft Dice, masked-image MSE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy.

    `z_a[i]` and `z_b[i]` are the two views of image i; every other embedding in the 2N batch is a
    negative. Returns the mean over all 2N anchors. Computed in fp32 so low temperatures stay stable
    under autocast.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(
            f"expected two (N, D) tensors of the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Multi-class soft Dice loss from logits (N, C, H, W) and integer targets (N, H, W).

    One Dice coefficient per class over the whole batch, averaged over classes; `eps` smooths
    classes absent from a batch.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (denominator + eps)
    return 1 - dice.mean()


def reconstruction_loss(
    reconstruction: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None = None, masked_only: bool = False
) -> torch.Tensor:
    """MSE between reconstruction and original: over the whole image (the paper) or, with
    `masked_only`, over the masked pixels only (SimMIM). `mask` is (N, 1, H, W), 1 where hidden."""
    squared_error = (reconstruction.float() - original.float()) ** 2
    if not masked_only:
        return squared_error.mean()
    if mask is None:
        raise ValueError("masked_only needs a mask")
    weight = mask.float().expand_as(squared_error)
    return (squared_error * weight).sum() / weight.sum().clamp_min(1)
