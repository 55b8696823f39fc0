"""Reading the prepared tensors that the prepare stages write."""
from __future__ import annotations

from pathlib import Path

import torch


def load_tensors(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that makes it (dvc repro)")
    return torch.load(path, map_location="cpu", weights_only=True)
