"""Segmentation metrics: a confusion matrix that accumulates and then reports (as in torchvision's
segmentation references), and the two views SPEC defines: dataset-level and the paper's per-batch mean."""
from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates a (C, C) matrix, rows = true class, columns = predicted class."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes)

    def scores(self) -> dict:
        return scores_from_confusion(self.matrix)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}), found {target.unique().tolist()}")
    index = target * num_classes + pred
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(matrix: torch.Tensor) -> dict:
    """Per-class F1 = 2TP/(2TP+FP+FN) and Jaccard = TP/(TP+FP+FN); means over the classes present in
    prediction or target. An absent class gets NaN per class and is left out of the means."""
    matrix = matrix.double()
    tp = matrix.diag()
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    present = (tp + fp + fn) > 0
    nan = torch.full_like(tp, float("nan"))
    f1 = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
    jaccard = torch.where(present, tp / (tp + fp + fn).clamp_min(1), nan)
    return {
        "f1": f1[present].mean().item() if present.any() else float("nan"),
        "jaccard": jaccard[present].mean().item() if present.any() else float("nan"),
        "per_class": {"f1": f1.tolist(), "jaccard": jaccard.tolist()},
    }


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Dataset-level scores over all the label maps given: one confusion matrix, then per-class and mean."""
    return scores_from_confusion(confusion_matrix(pred, target, num_classes))


class PaperStyleScores:
    """The paper's view: per batch, per-class scores averaged over the classes present in that batch,
    then the mean over batches. Depends on batch size; reported beside the dataset-level scores."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.batch_f1: list[float] = []
        self.batch_jaccard: list[float] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        s = segmentation_scores(pred, target, self.num_classes)
        self.batch_f1.append(s["f1"])
        self.batch_jaccard.append(s["jaccard"])

    def scores(self) -> dict:
        n = len(self.batch_f1)
        if n == 0:
            return {"f1": float("nan"), "jaccard": float("nan")}
        return {"f1": sum(self.batch_f1) / n, "jaccard": sum(self.batch_jaccard) / n}
