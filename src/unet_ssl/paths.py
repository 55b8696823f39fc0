"""Paths and file names of the pipeline's files, shared by every layer and mirrored in dvc.yaml."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout this package is installed from (editable install)
REPO_SAMPLE = REPO / "sample"  # the embedded sample, wherever the command runs
RAW = Path("data/raw")
SAMPLE = Path("sample")
PREPARED = Path("data/prepared")
PETS = PREPARED / "pets" / "pets.pt"
PRETRAIN_IMAGES = PREPARED / "pretrain" / "pretrain.pt"
PRETRAINED = Path("checkpoints/pretrained.pt")
FINETUNED = Path("checkpoints/finetuned.pt")
RESUME = Path("checkpoints/resume")
METRICS = Path("metrics")
PREDICTIONS = Path("outputs/predictions.pt")
REPORTS = Path("reports")
