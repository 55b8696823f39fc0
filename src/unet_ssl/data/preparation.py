"""The `prepare` stage: raw Oxford-IIIT Pet folders and pretraining tar shards -> compact uint8
tensors and pandas manifests, with seeded train/val/test splits and a list of every bad input."""
from __future__ import annotations

import hashlib
import logging
import tarfile
import unicodedata
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from unet_ssl.core.resize import resize_image, resize_mask
from unet_ssl.data.images import (
    IMAGE_SUFFIXES,
    BadInputError,
    decode_rgb,
    decode_trimap,
    trimap_to_classes,
)
from unet_ssl.data.splits import SPLIT_CODES, assign_splits
from unet_ssl.paths import (
    PETS_INPUT_REPORT,
    PETS_MANIFEST,
    PETS_TENSORS,
    PRETRAIN_INPUT_REPORT,
    PRETRAIN_MANIFEST,
    PRETRAIN_TENSORS,
)

log = logging.getLogger(__name__)

ON_BAD_INPUT = ("error", "skip")
MAX_LISTED = 20  # unusable files named one by one in the error message; the rest are counted


class InputReport:
    """Every file that was converted, ignored, excluded or found unusable, so nothing disappears
    silently. Unusable files are collected first and raised together by `check`, so one run names
    all of them (with data.on_bad_input: skip they are only listed, as "skipped")."""

    def __init__(self, on_bad_input: str):
        if on_bad_input not in ON_BAD_INPUT:
            raise ValueError(f"data.on_bad_input must be one of {ON_BAD_INPUT}, got {on_bad_input!r}")
        self.on_bad_input = on_bad_input
        self.rows: list[dict] = []
        self.problems: list[BadInputError] = []

    def add(self, path: Path | str, action: str, problem: str) -> None:
        self.rows.append({"file": str(path), "action": action, "problem": problem})

    def bad(self, error: BadInputError) -> None:
        self.problems.append(error)
        self.add(error.path, "skipped", error.problem)
        if self.on_bad_input == "skip":
            log.warning("skipping %s", error)

    def check(self, report_file: Path) -> None:
        """With on_bad_input: error, raises one BadInputError naming every unusable file."""
        if self.on_bad_input == "skip" or not self.problems:
            return
        first, rest = self.problems[0], self.problems[1:]
        lines = [first.problem, *(f"  {e}" for e in rest[:MAX_LISTED - 1])]
        if len(rest) > MAX_LISTED - 1:
            lines.append(f"  ... and {len(rest) - MAX_LISTED + 1} more")
        n = len(self.problems)
        lines.append(f"{n} unusable input file{'s' if n > 1 else ''}: fix or remove {'them' if n > 1 else 'it'}, "
                     f"or set data.on_bad_input: skip to leave such files out and list them in {report_file}")
        raise BadInputError(first.path, "\n".join(lines))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["file", "action", "problem"])


def _stem(path: Path) -> str:
    """File stem in Unicode NFC, so a name written decomposed (macOS) pairs with the same name composed."""
    return unicodedata.normalize("NFC", path.stem)


def _files_by_stem(folder: Path, suffixes: set[str], kind: str,
                   report: InputReport) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """The files of `folder` with an accepted suffix, by stem; everything else is listed as ignored
    and returned by stem too (to explain a missing partner)."""
    wanted: dict[str, list[Path]] = {}
    others: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            report.add(p, "ignored", "a folder; subfolders are not searched")
        elif p.name.startswith("."):
            report.add(p, "ignored", "hidden file")
        elif p.suffix.lower() in suffixes:
            wanted.setdefault(_stem(p), []).append(p)
        else:
            report.add(p, "ignored", f"not {kind} file (suffix {p.suffix or 'none'})")
            others[_stem(p)] = p
    return wanted, others


def find_pairs(pets_dir: Path, report: InputReport) -> list[tuple[str, Path, Path]]:
    """Pairs `images/<stem>.<ext>` with `annotations/trimaps/<stem>.png`. Unpaired or ambiguous files
    are unusable (see `InputReport.bad`); other files (the official .mat files) are listed as ignored."""
    images_dir, trimaps_dir = pets_dir / "images", pets_dir / "annotations" / "trimaps"
    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise BadInputError(
                d, "folder is missing; expected the Oxford-IIIT Pet layout (images/, annotations/trimaps/)")
    images, other_images = _files_by_stem(images_dir, IMAGE_SUFFIXES, "an image", report)
    trimaps, other_trimaps = _files_by_stem(trimaps_dir, {".png"}, "a PNG trimap", report)
    if not images:
        ignored = (f" ({len(other_images)} other files, e.g. {next(iter(other_images.values())).name})"
                   if other_images else "")
        raise BadInputError(images_dir, f"folder holds no images{ignored}")
    if not trimaps:
        ignored = (f" ({len(other_trimaps)} other files, e.g. {next(iter(other_trimaps.values())).name})"
                   if other_trimaps else "")
        raise BadInputError(trimaps_dir, f"folder holds no trimaps (.png){ignored}")
    pairs = []
    for stem in sorted(images.keys() | trimaps.keys()):
        found, trimap = images.get(stem, []), trimaps.get(stem, [])
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            for p in found:
                report.bad(BadInputError(p, f"{len(found)} images share the name {stem!r} ({names}); "
                                            "keep one so it pairs with its trimap"))
            for t in trimap:
                report.add(t, "skipped", f"its image is ambiguous ({names})")
        elif not trimap:
            hint = f"; found {other_trimaps[stem].name}, but trimaps must be PNG" if stem in other_trimaps else ""
            report.bad(BadInputError(found[0], f"image has no trimap (expected {trimaps_dir / (stem + '.png')}{hint})"))
        elif not found:
            hint = f"; found {other_images[stem].name}, which is not an image" if stem in other_images else ""
            report.bad(BadInputError(trimap[0], f"trimap has no image (expected {images_dir / stem}.jpg{hint})"))
        else:
            pairs.append((stem, found[0], trimap[0]))
    return pairs


def prepare_pets(raw_dir: Path, out_dir: Path, params: dict, seed: int) -> pd.DataFrame:
    """Writes `pets.pt` (images, class masks, split codes, names), `pets_manifest.csv` and
    `input_report.csv` (every converted, ignored, excluded or skipped file)."""
    pets_dir = raw_dir / "oxford-iiit-pet"
    size = params["image_size"]
    report = InputReport(params["on_bad_input"])
    excluded = set(params.get("exclude") or [])
    pairs = find_pairs(pets_dir, report)
    images, masks, rows = [], [], []
    for stem, image_path, trimap_path in tqdm(pairs, desc="prepare pets", unit="img", disable=None):
        if stem in excluded:
            report.add(image_path, "excluded", "listed in data.exclude")
            continue
        try:
            decoded = decode_rgb(image_path)
            trimap = decode_trimap(trimap_path)
            if tuple(trimap.shape) != tuple(decoded.pixels.shape[1:]):
                raise BadInputError(trimap_path,
                                    f"trimap size {tuple(trimap.shape[::-1])} differs from image size "
                                    f"{tuple(decoded.pixels.shape[:0:-1])} of {image_path.name} (width, height)")
        except BadInputError as e:
            report.bad(e)
            continue
        if decoded.converted:
            report.add(image_path, "converted", conversion_note(decoded.original_mode))
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
    report_file = out_dir / PETS_INPUT_REPORT
    report.check(report_file)
    if not rows:
        raise BadInputError(pets_dir, f"no usable image/trimap pairs ({len(report.problems)} unusable files skipped)")
    names = [r["name"] for r in rows]
    splits = assign_splits(names, [r["sha256"] for r in rows], pets_dir, params["split"], params["test_fraction"],
                           params["val_fraction"], seed)
    manifest = pd.DataFrame(rows).assign(split=splits, prepared_size=size)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({
        "images": torch.stack(images),
        "masks": torch.stack(masks),
        "split": torch.tensor([SPLIT_CODES[s] for s in splits], dtype=torch.uint8),
        "names": names,
    }, out_dir / PETS_TENSORS)
    manifest.to_csv(out_dir / PETS_MANIFEST, index=False)
    report.frame().to_csv(report_file, index=False)
    return manifest


def conversion_note(original_mode: str) -> str:
    note = f"mode {original_mode} converted to RGB"
    if original_mode.endswith(";16") or original_mode.startswith("I"):
        note += " (16-bit values reduced to 8 bits)" if "16" in original_mode else " (integer values reduced to 8 bits)"
    if "A" in original_mode.split(";")[0]:
        note += " (alpha channel dropped)"
    return note


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
    if not pretrain_dir.is_dir():
        raise BadInputError(pretrain_dir, "folder is missing; expected .tar shards of photos and classes.tsv")
    shards = sorted(pretrain_dir.glob("*.tar"))
    if not shards:
        raise BadInputError(pretrain_dir, "no .tar shards of pretraining images found")
    classes = read_classes(pretrain_dir)
    pet_wnids = {w for w in classes["wnid"] if "n02085620" <= w <= "n02124075"}
    size = params["pretrain_image_size"]
    report = InputReport(params["on_bad_input"])
    entries = []
    for shard in shards:
        with _open_tar(shard) as tar:
            for m in _members(shard, tar):
                if not m.isfile():
                    continue
                if Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((shard, m.name))
                else:
                    report.add(f"{shard}:{m.name}", "ignored",
                               f"not an image file (suffix {Path(m.name).suffix or 'none'})")
    if params.get("exclude_pets"):
        entries = [e for e in entries if Path(e[1]).name.split("_")[0] not in pet_wnids]
    g = torch.Generator().manual_seed(seed)
    limit = params.get("pretrain_limit") or len(entries)
    chosen = sorted(torch.randperm(len(entries), generator=g)[:limit].tolist())
    wanted: dict[Path, set[str]] = {}
    for i in chosen:
        wanted.setdefault(entries[i][0], set()).add(entries[i][1])
    images, rows = [], []
    progress = tqdm(total=len(chosen), desc="prepare pretrain", unit="img", disable=None)
    for shard, names in wanted.items():
        with _open_tar(shard) as tar:
            for member in _members(shard, tar):
                if member.name not in names:
                    continue
                where = f"{shard}:{member.name}"
                try:
                    data = tar.extractfile(member).read()
                    decoded = decode_rgb(where, data)
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise BadInputError(shard, f"tar archive is truncated or corrupt at {member.name} ({e})") from None
                except BadInputError as e:
                    report.bad(e)
                    continue
                finally:
                    progress.update()
                if decoded.converted:
                    report.add(where, "converted", conversion_note(decoded.original_mode))
                same_size = tuple(decoded.pixels.shape[1:]) == (size, size)
                pixels = decoded.pixels if same_size else resize_image(decoded.pixels, size)
                images.append(pixels)
                rows.append({"shard": shard.name, "member": member.name, "wnid": Path(member.name).name.split("_")[0],
                             "original_mode": decoded.original_mode, "sha256": hashlib.sha256(data).hexdigest()})
    progress.close()
    report_file = out_dir / PRETRAIN_INPUT_REPORT
    report.check(report_file)
    if not images:
        raise BadInputError(pretrain_dir,
                            f"no usable pretraining images ({len(report.problems)} unusable files skipped)")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"images": torch.stack(images)}, out_dir / PRETRAIN_TENSORS)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / PRETRAIN_MANIFEST, index=False)
    report.frame().to_csv(report_file, index=False)
    return manifest


def _open_tar(shard: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BadInputError(shard, f"not a readable tar archive ({e})") from None


def _members(shard: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """All members; Python's tarfile silently stops at a cut-off archive, so the end-of-archive
    block (a zero block right after the last member) is checked too."""
    try:
        members = tar.getmembers()
        end = members[-1].offset_data + -(-members[-1].size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE if members else 0
        tar.fileobj.seek(end)
        tail = tar.fileobj.read(tarfile.BLOCKSIZE)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BadInputError(shard, f"tar archive is truncated or corrupt ({e})") from None
    if len(tail) < tarfile.BLOCKSIZE or any(tail):
        after = f"after member {members[-1].name}" if members else "at its start"
        raise BadInputError(shard,
                            f"tar archive is truncated or corrupt {after} (no end-of-archive block at byte {end})")
    return members
