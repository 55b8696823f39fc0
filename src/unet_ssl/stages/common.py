"""Paths of the pipeline's files, shared by the stages and dvc.yaml."""
from __future__ import annotations

from pathlib import Path

import torch

from unet_ssl import checkpoint

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


def dotted(params: dict, name: str) -> object:
    """params["a"]["b"] for "a.b"."""
    node = params
    for part in name.split("."):
        node = node[part]
    return node


def resume_key(params: dict, read: list[str], inputs: dict[str, Path]) -> dict:
    """What makes a resume state this run's own: every param the stage reads (dotted names, as its
    dvc.yaml entry lists them; the seed included), the content hash of each input file, the code version."""
    return {"params": {name: dotted(params, name) for name in read},
            "inputs": {name: checkpoint.file_digest(path) for name, path in inputs.items()},
            "code": checkpoint.code_version()}
