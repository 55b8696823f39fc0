"""Test-split evaluation: dataset-level scores (primary) and the paper's per-batch view."""
from __future__ import annotations

import torch

from unet_ssl.finetune import NUM_CLASSES, predict
from unet_ssl.images import resize_image, resize_mask
from unet_ssl.metrics import ConfusionMatrix, PaperStyleScores
from unet_ssl.model import UNet
from unet_ssl.runtime import Runtime


def evaluate_predictions(pred: torch.Tensor, target: torch.Tensor, paper_batch_size: int) -> dict:
    """Both metric views over the same predictions; the paper-style view batches them as the
    paper's evaluation loop would have."""
    cm, paper = ConfusionMatrix(NUM_CLASSES), PaperStyleScores(NUM_CLASSES)
    cm.update(pred, target)
    for i in range(0, pred.shape[0], paper_batch_size):
        paper.update(pred[i:i + paper_batch_size], target[i:i + paper_batch_size])
    return {**cm.scores(), "paper_style": paper.scores(), "n_images": int(pred.shape[0])}


def evaluate_model(model: UNet, images: torch.Tensor, masks: torch.Tensor, runtime: Runtime, batch_size: int,
                   paper_batch_size: int, resolution: int | None = None) -> tuple[dict, torch.Tensor]:
    """Scores at the prepared resolution, or at `resolution` (images resized bilinearly, predictions
    scored against the label maps resized nearest-neighbour to the same size)."""
    if resolution and resolution != images.shape[-1]:
        images = torch.stack([resize_image(im, resolution) for im in images])
        masks = torch.stack([resize_mask(m, resolution) for m in masks])
    pred = predict(model, images, runtime, batch_size)
    return evaluate_predictions(pred, masks, paper_batch_size), pred
