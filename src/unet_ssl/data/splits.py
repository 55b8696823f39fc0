"""The one place a photo's split is decided: a seeded hash of its file name (or the official lists),
and the index helpers every stage uses to read the splits back from prepared tensors."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from unet_ssl.config import FULL_TRAINING_FRACTION
from unet_ssl.data.images import BadInputError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def read_split_list(path: Path) -> set[str]:
    if not path.is_file():
        raise BadInputError(path, "official split list is missing (needed for data.split: official)")
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def hash_fraction(name: str, seed: int, salt: str) -> float:
    """A number in [0, 1) that depends only on the name, the seed and the salt: the basis of a split
    that never moves a photo when other photos are added or removed."""
    digest = hashlib.sha256(f"{seed}:{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(names: list[str], sha256s: list[str], pets_dir: Path, split: str, test_fraction: float,
                  val_fraction: float, seed: int) -> list[str]:
    """Each photo's split follows from a seeded hash of its file name, so importing more photos never
    moves one into or out of the test split. 'random': a photo is in test when its hash is below
    `test_fraction` (the paper's 90/10); 'official': when the official test.txt lists it. Validation is
    carved from the rest by a second hash. Byte-identical photos (same sha256) all follow the first name
    of their group (in 'official', the group is in test if any member is), so none leaks across splits."""
    first_of: dict[str, str] = {}
    for name, digest in sorted(zip(names, sha256s)):
        first_of.setdefault(digest, name)
    if split == "random":
        is_test = {n: hash_fraction(n, seed, "test") < test_fraction for n in names}
    elif split == "official":
        official_test = read_split_list(pets_dir / "annotations" / "test.txt")
        test_groups = {d for n, d in zip(names, sha256s) if n in official_test}
        is_test = {n: d in test_groups for n, d in zip(names, sha256s)}
    else:
        raise ValueError(f"data.split must be 'random' or 'official', got {split!r}")
    splits = []
    for name, digest in zip(names, sha256s):
        key = first_of[digest]
        test = is_test[key]  # every member of a byte-identical group has its first name's value
        splits.append("test" if test else "val" if hash_fraction(key, seed, "val") < val_fraction else "train")
    return splits


def split_indices(split: torch.Tensor, name: str) -> torch.Tensor:
    return torch.nonzero(split == SPLIT_CODES[name]).flatten()


def subset_indices(train_indices: torch.Tensor, subset: float, seed: int) -> torch.Tensor:
    """A seeded subset of the training split holding `subset / 0.9` of it. The order is fixed by the
    seed alone, so smaller subsets are nested inside larger ones."""
    order = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(seed))
    k = max(1, round(len(train_indices) * subset / FULL_TRAINING_FRACTION))
    return train_indices[order[:k]].sort().values


def finetuning_splits(split: torch.Tensor, subset: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pets one fine-tuning run sees: its seeded `subset` of the training split, then the whole validation
    and test splits (which never change with the subset or the seed)."""
    return subset_indices(split_indices(split, "train"), subset, seed), split_indices(split, "val"), \
        split_indices(split, "test")
