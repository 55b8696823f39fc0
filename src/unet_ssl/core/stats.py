"""Paired comparisons of two configurations: a bootstrap over seeds and test images of the
dataset-level Jaccard difference, from per-image confusion matrices (SPEC: a verdict only where
the 95% interval excludes zero). Pure functions on torch/numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unet_ssl.core.metrics import confusion_matrix

NO_VERDICT = "within noise"
PerImage = tuple[np.ndarray, np.ndarray]  # (test image indices, (N, C, C) confusion matrices) of one run


@dataclass(frozen=True)
class PairedComparison:
    """B minus A in dataset-level Jaccard: observed, the percentile interval and its verdict."""

    difference: float
    low: float
    high: float
    level: float
    verdict: str  # "better", "worse" or NO_VERDICT
    seeds: int
    images: int
    resamples: int


def per_image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C, C) int64 confusion matrices, one per label map (rows true class, columns predicted)."""
    return torch.stack([confusion_matrix(p, t, num_classes) for p, t in zip(pred, target)])


def confusion_record(index: torch.Tensor, matrices: torch.Tensor) -> dict:
    """JSON-ready per-image matrices: the test images' dataset indices and one flat row-major row of
    C*C counts per image."""
    return {"index": [int(i) for i in index], "per_image": matrices.reshape(len(matrices), -1).tolist()}


def confusion_from_record(record: dict) -> PerImage:
    """(index, matrices of shape (N, C, C)) back from `confusion_record`."""
    rows = np.asarray(record["per_image"], dtype=np.int64)
    c = int(round(np.sqrt(rows.shape[1])))
    return np.asarray(record["index"], dtype=np.int64), rows.reshape(len(rows), c, c)


def dataset_jaccard(matrices: np.ndarray) -> np.ndarray:
    """Mean over the classes present of TP/(TP+FP+FN) for each (C, C) matrix in the last two axes;
    a class absent from prediction and target is left out (as `metrics.scores_from_confusion`)."""
    m = np.asarray(matrices, dtype=np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, tp / union, np.nan)
        return np.nanmean(per_class, axis=-1)


def resampled_differences(cm_a: np.ndarray, cm_b: np.ndarray, seeds: np.ndarray, images: np.ndarray) -> np.ndarray:
    """For each resample r: the mean over seeds[r] of Jaccard(B) - Jaccard(A), each from the matrices of
    images[r] summed (one image resample shared by A, B and every seed). cm_x: (S, N, C, C);
    seeds: (R, S) and images: (R, N) indices drawn with replacement."""
    weights = np.zeros((len(images), cm_a.shape[1]))
    np.add.at(weights, (np.arange(len(images))[:, None], images), 1.0)
    per_seed = [dataset_jaccard(np.tensordot(weights, cm.astype(np.float64), axes=([1], [1]))) for cm in (cm_a, cm_b)]
    return np.take_along_axis(per_seed[1] - per_seed[0], seeds, axis=1).mean(axis=1)


def paired_bootstrap(cm_a: np.ndarray, cm_b: np.ndarray, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedComparison:
    """Compares B with A, both (seeds, images, C, C) with the same seeds in the same order and the
    same test images: resamples seeds and images with replacement (seed indices drawn first, then
    image indices, from numpy's default_rng(seed)), the same indices for A and B. The verdict is
    'better' or 'worse' only where the percentile interval excludes zero."""
    a, b = np.asarray(cm_a), np.asarray(cm_b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"need two (seeds, images, C, C) arrays of one shape, got {a.shape} and {b.shape}")
    n_seeds, n_images = a.shape[:2]
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    images = rng.integers(0, n_images, size=(resamples, n_images))
    low, high = np.quantile(resampled_differences(a, b, seeds, images), [(1 - level) / 2, (1 + level) / 2])
    observed = float(np.mean(dataset_jaccard(b.sum(1)) - dataset_jaccard(a.sum(1))))
    verdict = "better" if low > 0 else "worse" if high < 0 else NO_VERDICT
    return PairedComparison(observed, float(low), float(high), level, verdict, n_seeds, n_images, resamples)


def describe(c: PairedComparison) -> str:
    """'+0.031 (95% CI +0.012 to +0.050, better)'."""
    return f"{c.difference:+.3f} ({c.level:.0%} CI {c.low:+.3f} to {c.high:+.3f}, {c.verdict})"


def paired_text(a: list[PerImage | None], b: list[PerImage | None], plain: float, resamples: int = 2000) -> str:
    """B against A as text, from the runs of each listed seed by seed in the same order: the bootstrap
    interval and verdict where every run recorded per-image matrices of the same test images, else the
    plain difference `plain` and why it has no interval."""
    runs = [*a, *b]
    if any(r is None for r in runs):
        return f"{plain:+.3f}, no interval (per-image scores not recorded)"
    if any(not np.array_equal(r[0], runs[0][0]) for r in runs):
        return f"{plain:+.3f}, no interval (different test images)"
    return describe(paired_bootstrap(np.stack([r[1] for r in a]), np.stack([r[1] for r in b]), resamples))
