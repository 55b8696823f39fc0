"""The `prepare` stage: raw Oxford-IIIT Pet folders and pretraining tar shards -> compact uint8
tensors and pandas manifests, with seeded train/val/test splits and a list of every bad input."""
from __future__ import annotations

import hashlib
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from unet_ssl.images import IMAGE_SUFFIXES, BadInputError, decode_rgb, decode_trimap, resize_image, resize_mask, trimap_to_classes

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass
class InputReport:
    """Every file that was converted, ignored or left out, so nothing disappears silently."""

    rows: list[dict] = field(default_factory=list)

    def add(self, path: Path | str, action: str, problem: str) -> None:
        self.rows.append({"file": str(path), "action": action, "problem": problem})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["file", "action", "problem"])


def _handle(error: BadInputError, on_bad_input: str, report: InputReport) -> None:
    if on_bad_input != "skip":
        raise BadInputError(error.path, error.problem + " (set data.on_bad_input: skip to leave such files out and list them)")
    log.warning("skipping %s", error)
    report.add(error.path, "skipped", error.problem)


def find_pairs(pets_dir: Path, on_bad_input: str, report: InputReport) -> list[tuple[str, Path, Path]]:
    """Pairs `images/<stem>.<ext>` with `annotations/trimaps/<stem>.png`; unpaired files are errors
    (or skipped and listed); non-image files among the images (the official .mat files) are listed."""
    images_dir, trimaps_dir = pets_dir / "images", pets_dir / "annotations" / "trimaps"
    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise BadInputError(d, "folder is missing; expected the Oxford-IIIT Pet layout (images/, annotations/trimaps/)")
    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            report.add(p, "ignored", f"not an image file (suffix {p.suffix or 'none'})")
            continue
        images[p.stem] = p
    trimaps = {p.stem: p for p in sorted(trimaps_dir.iterdir()) if p.suffix.lower() == ".png" and not p.name.startswith(".")}
    if not images:
        raise BadInputError(images_dir, "folder holds no images")
    pairs = []
    for stem in sorted(images.keys() | trimaps.keys()):
        if stem not in trimaps:
            _handle(BadInputError(images[stem], f"image has no trimap (expected {trimaps_dir / (stem + '.png')})"), on_bad_input, report)
        elif stem not in images:
            _handle(BadInputError(trimaps[stem], f"trimap has no image (expected {images_dir / stem}.jpg)"), on_bad_input, report)
        else:
            pairs.append((stem, images[stem], trimaps[stem]))
    return pairs


def read_split_list(path: Path) -> set[str]:
    if not path.is_file():
        raise BadInputError(path, "official split list is missing (needed for data.split: official)")
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def assign_splits(names: list[str], pets_dir: Path, split: str, test_fraction: float, val_fraction: float, seed: int) -> list[str]:
    """'random': a seeded test_fraction of all pairs is the test split (the paper's 90/10);
    'official': the official test.txt. Validation is always carved from the training side."""
    g = torch.Generator().manual_seed(seed)
    n = len(names)
    if split == "random":
        order = torch.randperm(n, generator=g).tolist()
        n_test = max(1, round(test_fraction * n))
        test = set(order[:n_test])
    elif split == "official":
        official_test = read_split_list(pets_dir / "annotations" / "test.txt")
        test = {i for i, name in enumerate(names) if name in official_test}
    else:
        raise ValueError(f"data.split must be 'random' or 'official', got {split!r}")
    train_side = [i for i in torch.randperm(n, generator=g).tolist() if i not in test]
    val = set(train_side[: max(1, round(val_fraction * len(train_side)))]) if val_fraction > 0 else set()
    return ["test" if i in test else "val" if i in val else "train" for i in range(n)]


def prepare_pets(raw_dir: Path, out_dir: Path, params: dict, seed: int) -> pd.DataFrame:
    """Writes `pets.pt` (images, class masks, split codes, names) and `pets_manifest.csv`."""
    pets_dir = raw_dir / "oxford-iiit-pet"
    size, on_bad = params["image_size"], params["on_bad_input"]
    report = InputReport()
    excluded = set(params.get("exclude") or [])
    pairs = find_pairs(pets_dir, on_bad, report)
    images, masks, rows = [], [], []
    for stem, image_path, trimap_path in tqdm(pairs, desc="prepare pets", unit="img"):
        if stem in excluded:
            report.add(image_path, "excluded", "listed in data.exclude")
            continue
        try:
            decoded = decode_rgb(image_path)
            trimap = decode_trimap(trimap_path)
            if tuple(trimap.shape) != tuple(decoded.pixels.shape[1:]):
                raise BadInputError(trimap_path, f"trimap size {tuple(trimap.shape[::-1])} differs from image size {tuple(decoded.pixels.shape[:0:-1])} of {image_path.name}")
        except BadInputError as e:
            _handle(e, on_bad, report)
            continue
        if decoded.converted:
            report.add(image_path, "converted", f"mode {decoded.original_mode} converted to RGB")
        classes = trimap_to_classes(resize_mask(trimap, size))
        images.append(resize_image(decoded.pixels, size))
        masks.append(classes)
        counts = torch.bincount(classes.reshape(-1).long(), minlength=3)
        rows.append({
            "name": stem,
            "image_file": str(image_path.relative_to(raw_dir)),
            "mask_file": str(trimap_path.relative_to(raw_dir)),
            "width": decoded.pixels.shape[2],
            "height": decoded.pixels.shape[1],
            "mask_width": trimap.shape[1],
            "mask_height": trimap.shape[0],
            "original_mode": decoded.original_mode,
            "mode": "RGB",
            "trimap_values": " ".join(str(v) for v in sorted(trimap.unique().tolist())),
            "class_values": " ".join(str(v) for v in sorted(classes.unique().tolist())),
            "pet_fraction": counts[0].item() / classes.numel(),
            "background_fraction": counts[1].item() / classes.numel(),
            "border_fraction": counts[2].item() / classes.numel(),
            "sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
        })
    if not rows:
        raise BadInputError(pets_dir, "no usable image/trimap pairs")
    names = [r["name"] for r in rows]
    splits = assign_splits(names, pets_dir, params["split"], params["test_fraction"], params["val_fraction"], seed)
    manifest = pd.DataFrame(rows).assign(split=splits, prepared_size=size)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({
        "images": torch.stack(images),
        "masks": torch.stack(masks),
        "split": torch.tensor([SPLIT_CODES[s] for s in splits], dtype=torch.uint8),
        "names": names,
    }, out_dir / "pets.pt")
    manifest.to_csv(out_dir / "pets_manifest.csv", index=False)
    report.frame().to_csv(out_dir / "input_report.csv", index=False)
    return manifest


def read_classes(pretrain_dir: Path) -> pd.DataFrame:
    path = pretrain_dir / "classes.tsv"
    if not path.is_file():
        raise BadInputError(path, "classes list is missing")
    return pd.read_csv(path, sep="\t", header=None, names=["wnid", "label"])


def prepare_pretrain(raw_dir: Path, out_dir: Path, params: dict, seed: int) -> pd.DataFrame:
    """Decodes every JPEG of the pretraining tar shards into `pretrain.pt` (uint8, N x 3 x S x S).

    `pretrain_limit` keeps a seeded random subset; `exclude_pets` drops the domestic dog and cat
    classes (n02085620 .. n02124075) to study pretraining data that holds no pets."""
    pretrain_dir = raw_dir / "pretrain"
    shards = sorted(pretrain_dir.glob("*.tar"))
    if not shards:
        raise BadInputError(pretrain_dir, "no .tar shards of pretraining images found")
    classes = read_classes(pretrain_dir)
    pet_wnids = {w for w in classes["wnid"] if "n02085620" <= w <= "n02124075"}
    size, on_bad = params["pretrain_image_size"], params["on_bad_input"]
    entries = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            entries += [(shard, m.name) for m in tar.getmembers() if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES]
    if params.get("exclude_pets"):
        entries = [e for e in entries if Path(e[1]).name.split("_")[0] not in pet_wnids]
    g = torch.Generator().manual_seed(seed)
    limit = params.get("pretrain_limit") or len(entries)
    chosen = sorted(torch.randperm(len(entries), generator=g)[:limit].tolist())
    wanted: dict[Path, set[str]] = {}
    for i in chosen:
        wanted.setdefault(entries[i][0], set()).add(entries[i][1])
    report = InputReport()
    images, rows = [], []
    progress = tqdm(total=len(chosen), desc="prepare pretrain", unit="img")
    for shard, members in wanted.items():
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name not in members:
                    continue
                where = f"{shard}:{member.name}"
                data = tar.extractfile(member).read()
                try:
                    decoded = decode_rgb(where, data)
                except BadInputError as e:
                    _handle(e, on_bad, report)
                    continue
                pixels = decoded.pixels if tuple(decoded.pixels.shape[1:]) == (size, size) else resize_image(decoded.pixels, size)
                images.append(pixels)
                rows.append({"shard": shard.name, "member": member.name, "wnid": Path(member.name).name.split("_")[0],
                             "original_mode": decoded.original_mode, "sha256": hashlib.sha256(data).hexdigest()})
                progress.update()
    progress.close()
    if not images:
        raise BadInputError(pretrain_dir, "no usable pretraining images")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"images": torch.stack(images)}, out_dir / "pretrain.pt")
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "pretrain_manifest.csv", index=False)
    report.frame().to_csv(out_dir / "pretrain_input_report.csv", index=False)
    return manifest
