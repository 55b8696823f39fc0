"""Resizing photos and label maps: bilinear for pixels, nearest for labels, so no new label appears."""
from __future__ import annotations

import torch


def resize_image(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size), bilinear with antialiasing."""
    x = torch.nn.functional.interpolate(pixels[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) labels -> (size, size), nearest neighbour only so no new label values appear."""
    x = torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest-exact")
    return x[0, 0].to(mask.dtype)
