"""Reading the prepared tensors that the prepare stages write."""
from __future__ import annotations

from pathlib import Path

import torch


def load_tensors(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that makes it (dvc repro)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pets(path: Path, image_size: int) -> dict:
    """The prepared pets, checked to be at the resolution fine-tuning expects."""
    pets = load_tensors(path)
    if pets["images"].shape[-1] != image_size:
        raise ValueError(f"{path} holds {pets['images'].shape[-1]}px pets but finetune.image_size is {image_size}; "
                         "set data.image_size to the same value")
    return pets
