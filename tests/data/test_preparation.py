"""Bad input at prepare time, each case built from real sample files damaged or converted with
Pillow in a temporary copy: unusable files stop the run with a message naming the file and the
problem (or, with data.on_bad_input: skip, are left out and listed); convertible ones are converted
and counted; nothing is dropped silently. The slow test writes reports/bad_input.md from real CLI runs."""
from __future__ import annotations

import io
import re
import shutil
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    REPO,
    SAMPLE_PETS,
    SMALL_PETS,
    copy_pets,
    copy_pretrain,
    damaged,
    png_rgb16,
    run_cli,
)
from PIL import Image

from unet_ssl.data.images import BadInputError
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain

PARAMS = {"image_size": 32, "split": "random", "test_fraction": 0.2, "val_fraction": 0.2, "exclude": [],
          "pretrain_image_size": 32, "pretrain_limit": 0, "exclude_pets": False}


def images(pets: Path) -> Path:
    return pets / "images"


def trimaps(pets: Path) -> Path:
    return pets / "annotations" / "trimaps"


def replace_image(pets: Path, stem: str, convert: Callable[[Image.Image], Image.Image], suffix: str, fmt: str) -> Path:
    """Replaces images/<stem>.jpg by a converted copy of the same real photo."""
    jpg = images(pets) / f"{stem}.jpg"
    photo = Image.open(jpg)
    photo.load()
    jpg.unlink()
    out = images(pets) / f"{stem}{suffix}"
    convert(photo).save(out, fmt)
    return out


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def paint_trimap(pets: Path, stem: str) -> Path:
    path = trimaps(pets) / f"{stem}.png"
    values = np.asarray(Image.open(path)).copy()
    values[:4, :4], values[-4:, -4:] = 0, 4
    Image.fromarray(values).save(path)
    return path


def shrink_trimap(pets: Path, stem: str) -> Path:
    path = trimaps(pets) / f"{stem}.png"
    trimap = Image.open(path)
    trimap.resize((trimap.width // 2, trimap.height // 2), Image.Resampling.NEAREST).save(path)
    return path


def delete(path: Path) -> Path:
    path.unlink()
    return path


def remove_partner(partner: Path, left_alone: Path) -> Path:
    """Deletes one file of a pair; the message must then name the other."""
    partner.unlink()
    return left_alone


def add_duplicate_stem(pets: Path, stem: str) -> Path:
    Image.open(images(pets) / f"{stem}.jpg").save(images(pets) / f"{stem}.png")
    return images(pets) / f"{stem}.jpg"


def trimap_as_jpeg(pets: Path, stem: str) -> Path:
    png = trimaps(pets) / f"{stem}.png"
    Image.open(png).save(trimaps(pets) / f"{stem}.jpg", "JPEG")
    png.unlink()
    return images(pets) / f"{stem}.jpg"


def rgb_trimap(pets: Path, stem: str) -> Path:
    path = trimaps(pets) / f"{stem}.png"
    Image.open(path).convert("RGB").save(path)
    return path


def add_matlab_file(pets: Path) -> Path:
    return Path(shutil.copy2(SAMPLE_PETS / "images" / "Abyssinian_100.mat", images(pets)))


def add_subfolder(pets: Path) -> Path:
    folder = images(pets) / "extra"
    folder.mkdir()
    shutil.copy2(images(pets) / "Bengal_129.jpg", folder)
    return folder


def rename_pair(pets: Path, stem: str, new: str, trimap_form: str = "NFC") -> Path:
    (images(pets) / f"{stem}.jpg").rename(images(pets) / f"{new}.jpg")
    (trimaps(pets) / f"{stem}.png").rename(trimaps(pets) / f"{unicodedata.normalize(trimap_form, new)}.png")
    return images(pets) / f"{new}.jpg"


def empty_folder(folder: Path) -> Path:
    for p in folder.iterdir():
        p.unlink()
    return folder


def remove_folder(folder: Path) -> Path:
    shutil.rmtree(folder)
    return folder


def to_16bit_gray(photo: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)


def rgb16_file(pets: Path, stem: str) -> Path:
    jpg = images(pets) / f"{stem}.jpg"
    rgb = np.asarray(Image.open(jpg).convert("RGB"))
    jpg.unlink()
    return write_bytes(images(pets) / f"{stem}.png", png_rgb16(rgb))


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # what was done to a real file (for the report)
    make: Callable[[Path], Path]  # damages the pets folder; returns the file or folder the message must name
    outcome: str  # unusable | converted | ignored | usable | fatal
    message: str  # what the message (or the input report's problem) must say
    stem: str = ""  # the pair it concerns


A, B, C = "Abyssinian_11", "Bengal_129", "american_bulldog_128"
CASES = [
    Case("corrupt_jpeg", "JPEG with 2,000 bytes of its picture data overwritten",
         lambda p: write_bytes(images(p) / f"{A}.jpg", damaged("corrupt_scan")), "unusable", "broken data stream", A),
    Case("corrupt_jpeg_header", "JPEG with its header tables zeroed",
         lambda p: write_bytes(images(p) / f"{A}.jpg", damaged("corrupt_header")), "unusable",
         "not a recognised image format", A),
    Case("truncated", "JPEG cut to half its bytes",
         lambda p: write_bytes(images(p) / f"{A}.jpg", damaged("truncated")), "unusable", "image file is truncated", A),
    Case("zero_byte", "image file of 0 bytes",
         lambda p: write_bytes(images(p) / f"{A}.jpg", b""), "unusable", "file is empty (0 bytes)", A),
    Case("not_an_image_with_jpg_suffix", "the official .mat file saved under an image's .jpg name",
         lambda p: write_bytes(images(p) / f"{A}.jpg", (SAMPLE_PETS / "images" / "Abyssinian_100.mat").read_bytes()),
         "unusable", "not a recognised image format", A),
    Case("mask_values", "trimap with pixels painted 0 and 4",
         lambda p: paint_trimap(p, B), "unusable",
         "trimap has values [0, 4] outside the official 1 (pet), 2 (background), 3 (border)", B),
    Case("rgb_trimap", "trimap saved as a 3-channel RGB PNG",
         lambda p: rgb_trimap(p, B), "unusable", "trimap has mode RGB; expected a single-channel PNG", B),
    Case("size_mismatch", "trimap resized to half the image's size",
         lambda p: shrink_trimap(p, C), "unusable", "differs from image size", C),
    Case("image_without_mask", "trimap deleted",
         lambda p: remove_partner(trimaps(p) / f"{C}.png", images(p) / f"{C}.jpg"), "unusable",
         "image has no trimap", C),
    Case("mask_without_image", "image deleted",
         lambda p: remove_partner(images(p) / f"{C}.jpg", trimaps(p) / f"{C}.png"), "unusable",
         "trimap has no image", C),
    Case("trimap_as_jpeg", "trimap saved as JPEG instead of PNG",
         lambda p: trimap_as_jpeg(p, C), "unusable", "but trimaps must be PNG", C),
    Case("duplicate_name", "the same photo also saved as <name>.png beside <name>.jpg",
         lambda p: add_duplicate_stem(p, A), "unusable", "2 images share the name", A),
    Case("grayscale", "photo converted to grayscale (L) JPEG",
         lambda p: replace_image(p, A, lambda im: im.convert("L"), ".jpg", "JPEG"), "converted",
         "mode L converted to RGB", A),
    Case("cmyk", "photo converted to CMYK JPEG",
         lambda p: replace_image(p, A, lambda im: im.convert("CMYK"), ".jpg", "JPEG"), "converted",
         "mode CMYK converted to RGB", A),
    Case("rgba", "photo saved as RGBA PNG",
         lambda p: replace_image(p, A, lambda im: im.convert("RGBA"), ".png", "PNG"), "converted",
         "mode RGBA converted to RGB (alpha channel dropped)", A),
    Case("palette", "photo saved as palette (P) PNG",
         lambda p: replace_image(p, A, lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE), ".png", "PNG"),
         "converted", "mode P converted to RGB", A),
    Case("16bit_gray", "photo saved as 16-bit grayscale PNG",
         lambda p: replace_image(p, A, to_16bit_gray, ".png", "PNG"), "converted",
         "mode I;16 converted to RGB (16-bit values reduced to 8 bits)", A),
    Case("16bit_rgb", "photo saved as 48-bit (16 bits per channel) RGB PNG",
         lambda p: rgb16_file(p, A), "converted", "mode RGB;16 converted to RGB (16-bit values reduced to 8 bits)", A),
    Case("non_image_file", "the official Abyssinian_100.mat among the images",
         add_matlab_file, "ignored", "not an image file (suffix .mat)"),
    Case("subfolder", "a subfolder with a photo inside images/",
         add_subfolder, "ignored", "a folder; subfolders are not searched"),
    Case("name_with_spaces", "pair renamed to 'Abyssinian 11 copy'",
         lambda p: rename_pair(p, A, "Abyssinian 11 copy"), "usable", "Abyssinian 11 copy", A),
    Case("unicode_name",
         "pair renamed to 'Abyssinian_café_猫', the trimap's name in decomposed Unicode (as macOS writes it)",
         lambda p: rename_pair(p, A, "Abyssinian_café_猫", trimap_form="NFD"), "usable", "Abyssinian_café_猫", A),
    Case("empty_images_folder", "every file of images/ deleted",
         lambda p: empty_folder(images(p)), "fatal", "folder holds no images"),
    Case("empty_trimaps_folder", "every file of annotations/trimaps/ deleted",
         lambda p: empty_folder(trimaps(p)), "fatal", "folder holds no trimaps (.png)"),
    Case("missing_folder", "annotations/trimaps/ deleted",
         lambda p: remove_folder(trimaps(p)), "fatal", "folder is missing"),
]
BY_OUTCOME = {kind: [pytest.param(c, id=c.id) for c in CASES if c.outcome == kind]
              for kind in ("unusable", "converted", "ignored", "usable", "fatal")}


def pets_copy(tmp_path: Path, case: Case) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    culprit = case.make(copy_pets(raw, SMALL_PETS))
    return raw, culprit


def prepare(raw: Path, out: Path, on_bad_input: str) -> pd.DataFrame:
    return prepare_pets(raw, out, {**PARAMS, "on_bad_input": on_bad_input}, seed=0)


def input_report(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "input_report.csv")


@pytest.mark.parametrize("case", BY_OUTCOME["unusable"])
def test_unusable_input_stops_prepare_naming_file_and_problem(tmp_path, case):
    raw, culprit = pets_copy(tmp_path, case)
    out = tmp_path / "prepared"
    with pytest.raises(BadInputError) as err:
        prepare(raw, out, "error")
    message = str(err.value)
    assert message.startswith(f"{culprit}: ") and case.message in message
    assert "data.on_bad_input: skip" in message
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("case", BY_OUTCOME["unusable"])
def test_unusable_input_is_left_out_and_listed_with_skip(tmp_path, case):
    raw, culprit = pets_copy(tmp_path, case)
    out = tmp_path / "prepared"
    manifest = prepare(raw, out, "skip")
    assert set(manifest["name"]) == set(SMALL_PETS) - {case.stem}
    skipped = input_report(out).query("action == 'skipped'")
    assert str(culprit) in set(skipped["file"])
    assert skipped.set_index("file").loc[[str(culprit)], "problem"].str.contains(case.message, regex=False).all()
    assert torch.load(out / "pets.pt", weights_only=True)["images"].shape[0] == len(manifest)


@pytest.mark.parametrize("case", BY_OUTCOME["converted"])
def test_convertible_input_is_converted_and_counted(tmp_path, case):
    raw, culprit = pets_copy(tmp_path, case)
    out = tmp_path / "prepared"
    manifest = prepare(raw, out, "error")
    assert set(manifest["name"]) == set(SMALL_PETS)
    row = manifest.set_index("name").loc[case.stem]
    assert row["mode"] == "RGB" and case.message.startswith(f"mode {row['original_mode']} ")
    converted = input_report(out).query("action == 'converted'")
    assert list(converted["file"]) == [str(culprit)] and list(converted["problem"]) == [case.message]


@pytest.mark.parametrize("case", BY_OUTCOME["ignored"])
def test_non_image_files_are_listed_not_dropped_silently(tmp_path, case):
    raw, culprit = pets_copy(tmp_path, case)
    out = tmp_path / "prepared"
    manifest = prepare(raw, out, "error")
    assert set(manifest["name"]) == set(SMALL_PETS)
    ignored = input_report(out).query("action == 'ignored'")
    assert list(ignored["file"]) == [str(culprit)] and list(ignored["problem"]) == [case.message]


@pytest.mark.parametrize("case", BY_OUTCOME["usable"])
def test_names_with_spaces_and_unicode_pair_up(tmp_path, case):
    raw, culprit = pets_copy(tmp_path, case)
    out = tmp_path / "prepared"
    manifest = prepare(raw, out, "error")
    assert set(manifest["name"]) == set(SMALL_PETS) - {case.stem} | {case.message}
    assert input_report(out).empty
    reread = pd.read_csv(out / "pets_manifest.csv")
    assert case.message in set(reread["name"]) and str(culprit.relative_to(raw)) in set(reread["image_file"])


@pytest.mark.parametrize("on_bad_input", ["error", "skip"])
@pytest.mark.parametrize("case", BY_OUTCOME["fatal"])
def test_missing_or_empty_folders_stop_prepare_even_with_skip(tmp_path, case, on_bad_input):
    raw, folder = pets_copy(tmp_path, case)
    with pytest.raises(BadInputError) as err:
        prepare(raw, tmp_path / "prepared", on_bad_input)
    assert str(err.value).startswith(f"{folder}: {case.message}")


def test_one_message_names_every_unusable_file(tmp_path):
    pets = copy_pets(tmp_path / "raw", SMALL_PETS)
    bad = [write_bytes(images(pets) / f"{A}.jpg", b""), paint_trimap(pets, B), delete(images(pets) / f"{C}.jpg")]
    with pytest.raises(BadInputError) as err:
        prepare(tmp_path / "raw", tmp_path / "prepared", "error")
    message = str(err.value)
    assert all(str(path) in message for path in [bad[0], bad[1], trimaps(pets) / f"{C}.png"])
    assert "3 unusable input files" in message


def test_skip_with_nothing_usable_left_stops(tmp_path):
    pets = copy_pets(tmp_path / "raw", SMALL_PETS[:2])
    for stem in SMALL_PETS[:2]:
        write_bytes(images(pets) / f"{stem}.jpg", b"")
    with pytest.raises(BadInputError, match=r"no usable image/trimap pairs \(2 unusable files skipped\)"):
        prepare(tmp_path / "raw", tmp_path / "prepared", "skip")


def test_unknown_on_bad_input_value_is_refused(tmp_path):
    copy_pets(tmp_path / "raw", SMALL_PETS)
    with pytest.raises(ValueError, match="data.on_bad_input must be one of"):
        prepare(tmp_path / "raw", tmp_path / "prepared", "ignore")


def bad_shard(raw: Path) -> tuple[Path, dict[str, str]]:
    """A pretraining shard of real sample photos with a truncated, an empty, a CMYK member and a
    text file added; returns it and the expected action per member."""
    pretrain = copy_pretrain(raw)
    original = next(pretrain.glob("*.tar"))
    with tarfile.open(original) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:12]
        payload = {m.name: tar.extractfile(m).read() for m in members}
    original.unlink()
    names = list(payload)
    payload[names[0]] = payload[names[0]][: len(payload[names[0]]) // 2]
    payload[names[1]] = b""
    cmyk = Image.open(io.BytesIO(payload[names[2]])).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG")
    payload[names[2]] = buffer.getvalue()
    payload["README.txt"] = b"photos of animals\n"
    shard = pretrain / "animals-bad.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return shard, {names[0]: "skipped", names[1]: "skipped", names[2]: "converted", "README.txt": "ignored"}


def test_pretraining_shard_members_are_named_converted_skipped_or_listed(tmp_path):
    raw = tmp_path / "raw"
    shard, expected = bad_shard(raw)
    with pytest.raises(BadInputError) as err:
        prepare_pretrain(raw, tmp_path / "prepared", {**PARAMS, "on_bad_input": "error"}, seed=0)
    skipped = [name for name, action in expected.items() if action == "skipped"]
    assert str(err.value).startswith(f"{shard}:{skipped[0]}: ")
    assert f"{shard}:{skipped[1]}: file is empty" in str(err.value)
    manifest = prepare_pretrain(raw, tmp_path / "prepared", {**PARAMS, "on_bad_input": "skip"}, seed=0)
    assert len(manifest) == 12 - 2
    report = pd.read_csv(tmp_path / "prepared" / "pretrain_input_report.csv")
    assert dict(zip(report["file"], report["action"])) == {
        f"{shard}:{name}": action for name, action in expected.items()}


def test_truncated_tar_shard_is_named(tmp_path):
    raw = tmp_path / "raw"
    shard = next(copy_pretrain(raw).glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3 + 100])
    with pytest.raises(BadInputError) as err:
        prepare_pretrain(raw, tmp_path / "prepared", {**PARAMS, "on_bad_input": "skip"}, seed=0)
    assert str(err.value).startswith(f"{shard}: ") and "truncated or corrupt" in str(err.value)


def test_cli_prints_the_bad_file_and_exits_1(make_workspace, mlflow_client, capsys):
    make_workspace({"data.image_size": 32, "data.exclude": []}, pets=SMALL_PETS, pretrain=False)
    write_bytes(Path("data/raw/oxford-iiit-pet/images") / f"{A}.jpg", damaged("truncated"))
    code, _, err = run_cli(["prepare-pets"], capsys)
    assert code == 1
    assert re.search(rf"^unet-ssl prepare-pets: error: data/raw/oxford-iiit-pet/images/{A}.jpg: cannot be decoded "
                     r"\(image file is truncated", err, re.M)
    assert not Path("data/prepared/pets/pets.pt").exists()
    run = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("unet-ssl").experiment_id],
                                    "tags.stage = 'prepare_pets'", order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FAILED"


def test_cli_skip_writes_versioned_report_and_logs_it_to_mlflow(make_workspace, mlflow_client, capsys, tmp_path):
    make_workspace({"data.image_size": 32, "data.exclude": [], "data.on_bad_input": "skip"}, pets=SMALL_PETS,
                   pretrain=False)
    write_bytes(Path("data/raw/oxford-iiit-pet/images") / f"{A}.jpg", b"")
    replace_image(Path("data/raw/oxford-iiit-pet"), B, lambda im: im.convert("CMYK"), ".jpg", "JPEG")
    code, out, _ = run_cli(["prepare-pets"], capsys)
    assert code == 0 and "5 pairs" in out and "1 converted, 1 skipped" in out
    report = input_report(Path("data/prepared/pets"))
    assert dict(zip(report["file"], report["action"])) == {
        f"data/raw/oxford-iiit-pet/images/{A}.jpg": "skipped", f"data/raw/oxford-iiit-pet/images/{B}.jpg": "converted"}
    experiment = mlflow_client.get_experiment_by_name("unet-ssl").experiment_id
    run = mlflow_client.search_runs([experiment], "tags.stage = 'prepare_pets'",
                                    order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED"
    assert (run.data.metrics["n_skipped"], run.data.metrics["n_converted"]) == (1, 1)
    logged = Path(mlflow_client.download_artifacts(run.info.run_id, "input_report/input_report.csv", str(tmp_path)))
    pd.testing.assert_frame_equal(pd.read_csv(logged), report)


def cli_outcome(case: Case, on_bad_input: str, make_workspace, capsys) -> tuple[int, str]:
    make_workspace({"data.image_size": 32, "data.exclude": [], "data.on_bad_input": on_bad_input},
                   pets=SMALL_PETS, pretrain=False, name=f"{case.id}-{on_bad_input}")
    case.make(Path("data/raw/oxford-iiit-pet"))
    code, out, err = run_cli(["prepare-pets"], capsys)
    shown = err[err.index("unet-ssl "):].strip() if code else out.strip()  # without the progress bars
    if code == 0 and case.outcome in ("unusable", "converted", "ignored"):
        rows = input_report(Path("data/prepared/pets")).itertuples()
        shown += "".join(f"<br>input_report.csv: `{r.file}`, {r.action}: {r.problem}" for r in rows)
    if code == 0 and case.outcome == "usable":
        names = pd.read_csv("data/prepared/pets/pets_manifest.csv")["name"]
        shown += "<br>pets_manifest.csv names: " + ", ".join(sorted(names))
    return code, shown


@pytest.mark.slow
def test_write_bad_input_report(make_workspace, mlflow_client, capsys):
    """Runs every case through `unet-ssl prepare-pets` with on_bad_input error and skip, and writes
    what the user sees to reports/bad_input.md."""
    cell = lambda code, text: f"exit {code}: " + text.replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["# Bad input: what the user sees", "",
             "Generated by `pytest -m slow tests/data/test_preparation.py::test_write_bad_input_report`: "
             "every row damages or converts",
             f"a real sample file (of {len(SMALL_PETS)} real pairs) with Pillow, runs `unet-ssl prepare-pets` "
             "in a temporary",
             "workspace, and records the exit code and the output (stderr on failure, the summary line "
             "and the input report",
             "rows on success). Paths are relative to the workspace.", "",
             "| case | what was done to a real file | outcome | `data.on_bad_input: error` "
             "| `data.on_bad_input: skip` |",
             "|---|---|---|---|---|"]
    for case in CASES:
        error = cli_outcome(case, "error", make_workspace, capsys)
        skip = cli_outcome(case, "skip", make_workspace, capsys)
        assert (error[0] == 1) == (case.outcome in ("unusable", "fatal")), (case.id, error)
        assert (skip[0] == 1) == (case.outcome == "fatal"), (case.id, skip)
        assert case.message in error[1] or case.message in skip[1], (case.id, error, skip)
        lines.append(f"| {case.id} | {case.what} | {case.outcome} | {cell(*error)} | {cell(*skip)} |")
    (REPO / "reports").mkdir(exist_ok=True)
    (REPO / "reports" / "bad_input.md").write_text("\n".join(lines) + "\n")


def sample_names_and_hashes() -> tuple[list[str], list[str]]:
    """Every photo of the sample by stem, with the sha256 of its bytes."""
    import hashlib

    photos = sorted(images(SAMPLE_PETS).glob("*.jpg"))
    return [p.stem for p in photos], [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]


@pytest.mark.parametrize("split", ["random", "official"])
def test_adding_photos_never_moves_one_into_or_out_of_the_test_split(split):
    from unet_ssl.data.splits import assign_splits

    names, hashes = sample_names_and_hashes()
    full = dict(zip(names, assign_splits(names, hashes, SAMPLE_PETS, split, 0.3, 0.2, seed=0)))
    for keep in (slice(0, None, 2), slice(1, None, 3), slice(0, 10)):
        part = dict(zip(names[keep], assign_splits(names[keep], hashes[keep], SAMPLE_PETS, split, 0.3, 0.2, seed=0)))
        assert part == {n: full[n] for n in part}, "a photo's split depends on the other photos present"
    assert set(full.values()) == {"train", "val", "test"}
    other_seed = assign_splits(names, hashes, SAMPLE_PETS, split, 0.3, 0.2, seed=1)
    test_sets = [{n for n, s in zip(names, splits) if s == "test"} for splits in (list(full.values()), other_seed)]
    assert (test_sets[0] != test_sets[1]) == (split == "random"), "the seed moves the random test split only"


@pytest.mark.parametrize("split", ["random", "official"])
def test_byte_identical_photos_share_one_split(split):
    from unet_ssl.data.splits import assign_splits

    names, hashes = sample_names_and_hashes()
    splits = dict(zip(names, assign_splits(names, hashes, SAMPLE_PETS, split, 0.3, 0.2, seed=0)))
    test_name = next(n for n, s in splits.items() if s == "test")
    train_name = next(n for n, s in splits.items() if s == "train")
    hashes[names.index(train_name)] = hashes[names.index(test_name)]  # the same photo under a second name
    twins = dict(zip(names, assign_splits(names, hashes, SAMPLE_PETS, split, 0.3, 0.2, seed=0)))
    assert twins[test_name] == twins[train_name]
    assert twins[min(test_name, train_name)] == splits[min(test_name, train_name)] or split == "official"
    if split == "official":  # a group with an official test member is all in test: no test photo is trained on
        assert twins[train_name] == "test"

