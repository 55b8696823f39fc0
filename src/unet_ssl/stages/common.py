"""Paths of the pipeline's files, shared by the stages and dvc.yaml."""
from __future__ import annotations

from pathlib import Path

import torch

PREPARED = Path("data/prepared")
PETS = PREPARED / "pets" / "pets.pt"
PRETRAIN_IMAGES = PREPARED / "pretrain" / "pretrain.pt"
PRETRAINED = Path("checkpoints/pretrained.pt")
FINETUNED = Path("checkpoints/finetuned.pt")
RESUME = Path("checkpoints/resume")
METRICS = Path("metrics")
PREDICTIONS = Path("outputs/predictions.pt")
REPORTS = Path("reports")


def load_tensors(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that makes it (dvc repro)")
    return torch.load(path, map_location="cpu", weights_only=True)


def split_indices(split: torch.Tensor, name: str) -> torch.Tensor:
    from unet_ssl.prepare import SPLIT_CODES

    return torch.nonzero(split == SPLIT_CODES[name]).flatten()

