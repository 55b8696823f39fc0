"""The real data `unet-ssl bench` runs on: the pipeline's prepared tensors for the tensor path, and the raw
files behind them for the naive per-sample path."""
from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from unet_ssl.paths import PETS, PETS_MANIFEST, PRETRAIN_IMAGES, REPO_SAMPLE


@dataclass
class BenchData:
    pretrain: torch.Tensor  # uint8 (N, 3, 64, 64)
    pets: torch.Tensor  # uint8 (M, 3, 128, 128)
    masks: torch.Tensor  # class maps (M, 128, 128)
    split: torch.Tensor  # split codes (M,)
    pretrain_jpegs: list[bytes]  # encoded photos from the tar shards (a bounded number)
    pet_files: list[tuple[Path, Path]]  # (image, trimap) pairs
    source: str


def _read_jpegs(pretrain_dir: Path, limit: int) -> list[bytes]:
    out = []
    for shard in sorted(pretrain_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                    out.append(tar.extractfile(member).read())
                    if len(out) >= limit:
                        return out
    return out


def load_data(root: Path, params: dict, naive_images: int = 512) -> BenchData:
    """The pipeline's prepared tensors when they exist under `root`, else the embedded sample
    decoded with the pipeline's own prepare code (real photos either way). The naive pipeline
    reads the raw files the tensors were made from (listed in the pets manifest)."""
    import pandas as pd

    from unet_ssl.data.preparation import prepare_pets, prepare_pretrain

    def read(pets_dir: Path, pretrain_file: Path, raw: Path, source: str) -> BenchData:
        pets = torch.load(pets_dir / PETS.name, weights_only=True)
        photos = torch.load(pretrain_file, weights_only=True)["images"]
        manifest = pd.read_csv(pets_dir / PETS_MANIFEST)
        files = [(raw / image, raw / mask) for image, mask in zip(manifest["image_file"], manifest["mask_file"])]
        return BenchData(photos, pets["images"], pets["masks"], pets["split"],
                         _read_jpegs(raw / "pretrain", naive_images), files,
                         f"{source} ({photos.shape[0]} photos, {pets['images'].shape[0]} pets)")

    if (root / PETS).is_file() and (root / PRETRAIN_IMAGES).is_file():
        return read(root / PETS.parent, root / PRETRAIN_IMAGES, root / params["data"]["raw_dir"],
                    f"prepared tensors in {root / PETS.parent.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        pets_dir, pretrain_dir = Path(tmp) / PETS.parent.name, Path(tmp) / PRETRAIN_IMAGES.parent.name
        data_params = {**params["data"], "pretrain_limit": 0}
        prepare_pets(REPO_SAMPLE, pets_dir, data_params, data_params["split_seed"])
        prepare_pretrain(REPO_SAMPLE, pretrain_dir, data_params, data_params["split_seed"])
        return read(pets_dir, pretrain_dir / PRETRAIN_IMAGES.name, REPO_SAMPLE, "embedded sample decoded now")
