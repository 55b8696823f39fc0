"""Breed and species of an Oxford-IIIT Pet photo, read from its file name.

The official `list.txt` says it: "All images with 1st letter as captial are cat images, images with small first
letter are dog images". The name rule also covers photos that `list.txt` misses (the official set has a few), so
every labelled pet gets a species, and every report can give cats and dogs apart: the shared data holds 2,031 cats
and 334 dogs, so an overall score is mostly a cat score."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import torch

from unet_ssl.core.metrics import scores_from_confusion

SPECIES = ("cat", "dog")


def breed(name: str) -> str:
    """'Egyptian_Mau_12' -> 'Egyptian_Mau'."""
    return name.rsplit("_", 1)[0]


def species(name: str) -> str:
    """'Bengal_129' -> 'cat', 'american_bulldog_128' -> 'dog'."""
    return "cat" if name[:1].isupper() else "dog"


def describe_pets(names: Iterable[str]) -> str:
    """'2,364 labelled pets of 37 breeds (2,030 cats, 334 dogs)': how every report states its data."""
    names = list(names)
    counts = Counter(species(n) for n in names)
    breeds = {breed(n) for n in names}
    return (f"{plural(len(names), 'labelled pet')} of {plural(len(breeds), 'breed')} "
            f"({plural(counts['cat'], 'cat')}, {plural(counts['dog'], 'dog')})")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def scores_by_species(names: list[str], index: Iterable[int], per_image) -> dict[str, dict]:
    """Dataset-level scores of the cats and of the dogs among scored images: `index` holds their dataset
    indices (into `names`), `per_image` their (N, C, C) confusion matrices (tensor or array); each species'
    matrices are summed, then scored. A species with no scored image is left out."""
    matrices = torch.as_tensor(per_image)
    kinds = [species(names[int(i)]) for i in index]
    out = {}
    for kind in SPECIES:
        rows = [i for i, k in enumerate(kinds) if k == kind]
        if rows:
            scores = scores_from_confusion(matrices[rows].sum(0))
            out[kind] = {"n_images": len(rows), "f1": scores["f1"], "jaccard": scores["jaccard"]}
    return out
