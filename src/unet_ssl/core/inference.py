"""Inference and test-split evaluation: class maps from a model (at its resolution, or upsampled to
each photo's own size), dataset-level scores (primary) and the paper's per-batch view."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import augment, checkpoint
from unet_ssl.core.metrics import ConfusionMatrix, PaperStyleScores
from unet_ssl.core.model import UNet
from unet_ssl.core.resize import resize_image, resize_mask
from unet_ssl.core.runtime import Runtime

NUM_CLASSES = len(CLASS_NAMES)
DEFAULT_IMAGE_SIZE = 128  # fine-tuning's default resolution, for checkpoints that do not record theirs
INFERENCE_RUNTIME = {"device": "auto", "precision": "fp32", "channels_last": False}  # scoring a finished model
OVERLAY_COLOURS = {0: (255, 0, 0), 2: (255, 255, 0)}  # pet red, border yellow; background left as is
OVERLAY_ALPHA = 0.45


TTA_MODES: dict[str, tuple[tuple[float, ...], bool]] = {
    "none": ((1.0,), False),
    "flip": ((1.0,), True),
    "flip_scales": ((1.0, 1.25), True),
}
"""Test-time augmentation: the input scales a segmenter also sees and whether it also sees the mirror image."""
SIDE_MULTIPLE = 8  # the U-Net halves a side three times


class ViewAveraged(torch.nn.Module):
    """A segmenter whose logits are the mean over views of the input (mirrored, rescaled), each mapped back
    to the input's pixels: a cheap gain at inference, with no retraining, whose worth validation decides."""

    def __init__(self, model: torch.nn.Module, scales: tuple[float, ...], flip: bool):
        super().__init__()
        self.model, self.scales, self.flip = model, scales, flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        total, views = None, 0
        for scale in self.scales:
            side = tuple(max(SIDE_MULTIPLE, round(s * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE) for s in size)
            scaled = x if side == size else F.interpolate(x, size=side, mode="bilinear", align_corners=False)
            for mirrored in (False, True) if self.flip else (False,):
                out = self.model(scaled.flip(-1) if mirrored else scaled)
                out = out.flip(-1) if mirrored else out
                out = out if side == size else F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                total, views = (out if total is None else total + out), views + 1
        return total / views


def with_tta(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The model itself for `none`, else wrapped to average its logits over the mode's views."""
    if mode not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    scales, flip = TTA_MODES[mode]
    return model if mode == "none" else ViewAveraged(model, scales, flip)


def load_segmenter(path: Path) -> tuple[UNet, int]:
    """A fine-tuned checkpoint -> its U-Net in eval mode and the resolution it was fine-tuned at."""
    ckpt = checkpoint.load(path)
    return checkpoint.load_model(path).eval(), int(ckpt.get("config", {}).get("image_size", DEFAULT_IMAGE_SIZE))


def predict(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> predicted class maps (N, H, W), batch by batch."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = runtime.batch(augment.to_float(images[i:i + batch_size]))
            with runtime.autocast():
                out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, *images.shape[2:], dtype=torch.long)


def segment(model: torch.nn.Module, photos: list[torch.Tensor], runtime: Runtime,
            image_size: int) -> list[torch.Tensor]:
    """One batch of uint8 photos (3, H, W) of any sizes -> class maps (H, W) at each photo's own size.
    Each photo is resized to the model's `image_size`; the logits, not the labels, are upsampled
    bilinearly to the photo's size before the argmax, so boundaries follow the model's confidence
    instead of a blocky nearest-neighbour label map. `model` must be in eval mode already: an
    exported PyTorch-flavour model from MLflow cannot be switched."""
    x = torch.stack([p if p.shape[1:] == (image_size, image_size) else resize_image(p, image_size) for p in photos])
    with torch.inference_mode():
        with runtime.autocast():
            logits = model(runtime.batch(augment.to_float(x)))
        logits = logits.float()
        return [F.interpolate(logits[i:i + 1], size=tuple(p.shape[1:]), mode="bilinear",
                              align_corners=False)[0].argmax(0).cpu()
                for i, p in enumerate(photos)]


def classes_to_trimap(classes: torch.Tensor) -> torch.Tensor:
    """Classes 0 (pet), 1 (background), 2 (border) -> the official trimap values 1/2/3 as uint8."""
    return (classes + 1).to(torch.uint8)


def overlay(photo: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """uint8 photo (3, H, W) with the pet tinted red and the border yellow (alpha OVERLAY_ALPHA)."""
    palette = torch.zeros(NUM_CLASSES, 3)
    alpha = torch.zeros(NUM_CLASSES)
    for cls, colour in OVERLAY_COLOURS.items():
        palette[cls], alpha[cls] = torch.tensor(colour, dtype=torch.float32), OVERLAY_ALPHA
    a = alpha[classes]
    out = photo.float() * (1 - a) + palette[classes].permute(2, 0, 1) * a
    return out.round().clamp(0, 255).to(torch.uint8)


def evaluate_predictions(pred: torch.Tensor, target: torch.Tensor, paper_batch_size: int) -> dict:
    """Both metric views over the same predictions; the paper-style view batches them as the
    paper's evaluation loop would have."""
    cm, paper = ConfusionMatrix(NUM_CLASSES), PaperStyleScores(NUM_CLASSES)
    cm.update(pred, target)
    for i in range(0, pred.shape[0], paper_batch_size):
        paper.update(pred[i:i + paper_batch_size], target[i:i + paper_batch_size])
    return {**cm.scores(), "paper_style": paper.scores(), "n_images": int(pred.shape[0])}


def evaluate_model(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, runtime: Runtime, batch_size: int,
                   paper_batch_size: int, resolution: int | None = None) -> tuple[dict, torch.Tensor]:
    """Scores at the prepared resolution, or at `resolution` (images resized bilinearly, predictions
    scored against the label maps resized nearest-neighbour to the same size)."""
    if resolution and resolution != images.shape[-1]:
        images = torch.stack([resize_image(im, resolution) for im in images])
        masks = torch.stack([resize_mask(m, resolution) for m in masks])
    pred = predict(model, images, runtime, batch_size)
    return evaluate_predictions(pred, masks, paper_batch_size), pred
