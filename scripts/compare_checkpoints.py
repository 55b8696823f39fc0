"""Two fine-tuned checkpoints compared on the validation and test splits of the prepared pets: each one's
dataset-level Jaccard, and B minus A with a 95% paired bootstrap interval over the split's images (one run
each, so the interval covers images, not seeds), overall and for cats and dogs apart. Validation decides;
test confirms. Prints a markdown table and writes the numbers as JSON.

    python scripts/compare_checkpoints.py A.pt B.pt --names "from scratch" "SimCLR" --out comparison.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import checkpoint
from unet_ssl.core.inference import predict
from unet_ssl.core.runtime import make_runtime
from unet_ssl.core.stats import dataset_jaccard, describe, paired_bootstrap, per_image_confusion
from unet_ssl.data.prepared import load_tensors
from unet_ssl.data.species import SPECIES, species
from unet_ssl.data.splits import split_indices
from unet_ssl.paths import PETS

RUNTIME = {"device": "auto", "precision": "fp32", "channels_last": False}


def confusions(path: Path, pets: dict, indices: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """(N, C, C) per-image confusion matrices of the checkpoint on each split's pets, loading it once."""
    runtime = make_runtime(RUNTIME)
    model = runtime.model(checkpoint.load_model(path))
    found = {}
    for split, index in indices.items():
        pred = predict(model, pets["images"][index], runtime, 32)
        found[split] = per_image_confusion(pred, pets["masks"][index], len(CLASS_NAMES)).numpy()
    return found


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    paired = paired_bootstrap(a[None], b[None])
    return {"a": float(dataset_jaccard(a.sum(0))), "b": float(dataset_jaccard(b.sum(0))), "images": len(a),
            "difference": paired.difference, "low": paired.low, "high": paired.high, "verdict": paired.verdict,
            "text": describe(paired)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkpoint A (the baseline)")
    parser.add_argument("b", type=Path, help="checkpoint B")
    parser.add_argument("--names", nargs=2, default=["A", "B"], help="what A and B are, for the table")
    parser.add_argument("--pets", type=Path, default=PETS, help="prepared pets tensors (default: the pipeline's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the numbers")
    args = parser.parse_args()
    pets = load_tensors(args.pets)
    rows, record = [], {"a": str(args.a), "b": str(args.b), "names": args.names}
    indices = {split: split_indices(pets["split"], split) for split in ("val", "test")}
    by_split_a, by_split_b = confusions(args.a, pets, indices), confusions(args.b, pets, indices)
    for split, index in indices.items():
        a, b = by_split_a[split], by_split_b[split]
        kinds = np.array([species(pets["names"][int(i)]) for i in index])
        groups = {"all": np.ones(len(kinds), bool), **{kind: kinds == kind for kind in SPECIES}}
        for group, rows_of in groups.items():
            if rows_of.any():
                result = compare(a[rows_of], b[rows_of])
                record[f"{split}/{group}"] = result
                rows.append(f"| {split} | {group} | {result['images']} | {result['a']:.3f} | {result['b']:.3f} | "
                            f"{result['text']} |")
    args.out.write_text(json.dumps(record, indent=2))
    print(f"| split | pets | images | {args.names[0]} Jaccard | {args.names[1]} Jaccard | "
          f"{args.names[1]} minus {args.names[0]} (paired over images) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
