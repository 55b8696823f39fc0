"""Stage `evaluate`: test-split scores (dataset-level and paper-style) as DVC metrics and in MLflow;
scores of any folder of images and trimaps; masks and overlays for any photos (`unet-ssl predict`)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import checkpoint
from unet_ssl.core.inference import (
    DEFAULT_IMAGE_SIZE,
    INFERENCE_RUNTIME,
    classes_to_trimap,
    evaluate_model,
    load_segmenter,
    overlay,
    segment,
    with_tta,
)
from unet_ssl.core.model import UNet
from unet_ssl.core.runtime import make_runtime, progress
from unet_ssl.core.stats import confusion_record, per_image_confusion
from unet_ssl.data.images import IMAGE_SUFFIXES, BadInputError, DecodedImage, decode_rgb
from unet_ssl.data.prepared import load_tensors
from unet_ssl.data.species import scores_by_species
from unet_ssl.data.splits import split_indices
from unet_ssl.paths import CONFUSION_ARTIFACT, FINETUNED, PETS, PREDICTIONS, TEST_SCORES
from unet_ssl.render import score_record
from unet_ssl.tracking.mlflow_runs import log_to_pipeline, stage_run, summary_metrics


def run(params: dict) -> None:
    ev = params["evaluate"]
    runtime = make_runtime(params["runtime"])
    pets = load_tensors(PETS)
    test_idx = split_indices(pets["split"], "test")
    model = checkpoint.load_model(FINETUNED)
    model = runtime.model(model)
    with stage_run("evaluate", params) as run:
        run.log_data("pets", PETS, "evaluation")
        scores, pred = evaluate_model(model, pets["images"][test_idx], pets["masks"][test_idx], runtime,
                                      ev["batch_size"], ev["paper_batch_size"])
        per_image = per_image_confusion(pred, pets["masks"][test_idx], len(CLASS_NAMES))
        run.log_dict(confusion_record(test_idx, per_image), CONFUSION_ARTIFACT)
        metrics = summary_metrics("test_", scores, CLASS_NAMES)
        run.log_metrics(metrics)
        TEST_SCORES.parent.mkdir(exist_ok=True)
        by_species = scores_by_species(pets["names"], test_idx, per_image)
        run.log_metrics({f"test_{kind}_{m}": s[m] for kind, s in by_species.items() for m in ("f1", "jaccard")})
        out = {"test": score_record(scores), "test_by_species": by_species}
        TEST_SCORES.write_text(json.dumps(out, indent=2))
        run.log_artifact(TEST_SCORES)
        PREDICTIONS.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"index": test_idx, "pred": pred.to(torch.uint8)}, PREDICTIONS)
    log_to_pipeline(params, metrics)
    print(f"evaluate: {scores['n_images']} test images, dataset-level F1 {scores['f1']:.3f} "
          f"Jaccard {scores['jaccard']:.3f} (paper-style F1 {scores['paper_style']['f1']:.3f} "
          f"Jaccard {scores['paper_style']['jaccard']:.3f})")


PAPER_BATCH_SIZE = 256  # params.yaml's evaluate.paper_batch_size, so --batch-size (a speed knob) changes no score
ON_BAD_INPUT = ("error", "skip")
MAX_LISTED = 20  # bad photos named one by one in the error message; the rest are counted
MODEL_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # runs:/..., models:/..., file:///...; not a plain path


def evaluate_folder(checkpoint_path: Path, images_dir: Path, trimaps_dir: Path, out: Path, batch_size: int = 16,
                    paper_batch_size: int = PAPER_BATCH_SIZE, tta: str = "none") -> dict:
    """Scores a fine-tuned checkpoint on any folder of images and trimaps (official 1/2/3 values,
    matched by file stem, any size): each pair is resized to the checkpoint's training resolution.
    `tta` is a test-time augmentation of core.inference.TTA_MODES."""
    from unet_ssl.core.resize import resize_image, resize_mask
    from unet_ssl.data.images import decode_trimap, trimap_to_classes

    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise BadInputError(d, "folder does not exist")
    images = {p.stem: p for p in sorted(images_dir.iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    if not images:
        raise BadInputError(images_dir, "folder holds no images")
    trimaps = {p.stem: p for p in trimaps_dir.glob("*.png")}
    missing = sorted(set(images) - set(trimaps))
    if missing:
        raise BadInputError(trimaps_dir, f"no trimap for {len(missing)} image(s): {', '.join(missing[:5])}")
    model, size = load_segmenter(checkpoint_path)
    xs, ys = [], []
    for stem, path in images.items():
        decoded, trimap = decode_rgb(path), decode_trimap(trimaps[stem])
        if tuple(trimap.shape) != tuple(decoded.pixels.shape[1:]):
            raise BadInputError(trimaps[stem], f"trimap size {tuple(trimap.shape)} differs from image size "
                                               f"{tuple(decoded.pixels.shape[1:])}")
        xs.append(resize_image(decoded.pixels, size))
        ys.append(trimap_to_classes(resize_mask(trimap, size)))
    runtime = make_runtime(INFERENCE_RUNTIME)
    scores, _ = evaluate_model(with_tta(runtime.model(model), tta), torch.stack(xs), torch.stack(ys), runtime,
                               batch_size, paper_batch_size)
    result = score_record(scores) | {"tta": tta}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"evaluate: {result['n_images']} images at {size}px, tta {tta}, F1 {scores['f1']:.3f}, "
          f"Jaccard {scores['jaccard']:.3f} -> {out}")
    return result


def load_inference_model(source: str) -> tuple[torch.nn.Module, int]:
    """A checkpoint file, or an MLflow model URI (runs:/..., models:/pets-unet@champion) -> the model
    and the resolution it takes. From MLflow: the pets-unet pyfunc model (its U-Net, so photos are
    batched as for a checkpoint) or a PyTorch-flavour model such as a finetune stage run's `model`
    (its resolution read from the signature, else 128 px)."""
    if not MODEL_URI.match(source):
        return load_segmenter(Path(source))
    import mlflow

    from unet_ssl.tracking.mlflow_runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    info = mlflow.models.get_model_info(source)
    if "pytorch" in info.flavors:
        shape = info.signature.inputs.inputs[0].shape if info.signature else ()
        size = shape[-1] if shape and shape[-1] > 0 else DEFAULT_IMAGE_SIZE
        return mlflow.pytorch.load_model(source, map_location="cpu"), size
    python_model = mlflow.pyfunc.load_model(source).unwrap_python_model()
    if not isinstance(getattr(python_model, "model", None), UNet):
        raise checkpoint.CheckpointError(f"{source} is neither the pets-unet pyfunc model nor a PyTorch model")
    return python_model.model, python_model.image_size


def photo_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Files as given, and the image files (by suffix, not hidden) directly inside folders; returns
    them with the folder entries left out for not being images by name."""
    photos, ignored = [], []
    for path in paths:
        if not path.is_dir():
            photos.append(path)
            continue
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise BadInputError(path, "folder holds no images")
        photos += found
        ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
    seen: dict[str, Path] = {}
    for p in photos:
        if p.stem in seen and seen[p.stem] != p:
            raise BadInputError(p, f"has the same name as {seen[p.stem]}; their masks would overwrite each other")
        seen[p.stem] = p
    return list(dict.fromkeys(photos)), ignored


def bad_input_error(problems: list[BadInputError], advice: str) -> BadInputError:
    """One error naming every unusable photo, as the data stages report theirs."""
    first, rest = problems[0], problems[1:]
    lines = [first.problem, *(f"  {e}" for e in rest[:MAX_LISTED - 1])]
    if len(rest) > MAX_LISTED - 1:
        lines.append(f"  ... and {len(rest) - MAX_LISTED + 1} more")
    n = len(problems)
    lines.append(f"{n} unusable photo{'s' if n > 1 else ''}: {advice}")
    return BadInputError(first.path, "\n".join(lines))


def decode_all(paths: list[Path]) -> tuple[list[tuple[Path, DecodedImage]], list[BadInputError]]:
    """Decodes every photo, collecting the unusable ones instead of stopping at the first."""
    good, bad = [], []
    for path in paths:
        try:
            good.append((path, decode_rgb(path)))
        except BadInputError as e:
            bad.append(e)
    return good, bad


def predict_photos(source: str, paths: list[Path], out: Path, batch_size: int = 16,
                   on_bad_input: str = "error", tta: str = "none") -> dict:
    """Writes `out/<stem>.png` (class map at the photo's own size in the official trimap values 1 pet,
    2 background, 3 border) and `out/<stem>_overlay.jpg` for every photo. With on_bad_input `error`
    every photo is decoded first and nothing is written if any is unusable (one message names them
    all); with `skip` the usable ones are written and the others listed. `tta`: a mode of
    core.inference.TTA_MODES."""
    from PIL import Image

    if on_bad_input not in ON_BAD_INPUT:
        raise ValueError(f"on_bad_input must be one of {ON_BAD_INPUT}, got {on_bad_input!r}")
    photos, ignored = photo_paths(paths)
    model, size = load_inference_model(source)
    runtime = make_runtime(INFERENCE_RUNTIME)
    model = with_tta(runtime.model(model), tta)
    start = time.perf_counter()
    if on_bad_input == "error":
        _, bad = decode_all(photos)
        if bad:
            raise bad_input_error(bad, "fix or remove them, or pass --on-bad-input skip to write the others and "
                                       "list these")
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[BadInputError] = []
    written = 0
    for i in progress(range(0, len(photos), batch_size), "predict"):
        good, bad = decode_all(photos[i:i + batch_size])
        skipped += bad
        if not good:
            continue
        maps = segment(model, [d.pixels for _, d in good], runtime, size)
        for (path, decoded), classes in zip(good, maps):
            Image.fromarray(classes_to_trimap(classes).numpy()).save(out / f"{path.stem}.png")
            Image.fromarray(overlay(decoded.pixels, classes).permute(1, 2, 0).numpy()).save(
                out / f"{path.stem}_overlay.jpg", quality=90)
            written += 1
    seconds = time.perf_counter() - start
    if not written:
        raise bad_input_error(skipped, "none of the photos is usable, nothing was written")
    per_photo = seconds / written
    print(f"predict: {written} photo(s) -> {out} (<stem>.png in trimap values 1 pet, 2 background, 3 border; "
          f"<stem>_overlay.jpg) at {size}px, batch {batch_size}: {seconds:.2f} s, {per_photo * 1000:.0f} ms per photo")
    for e in skipped:
        print(f"  skipped {e}")
    if ignored:
        print(f"  ignored {len(ignored)} file(s) not named as images: "
              f"{', '.join(p.name for p in ignored[:MAX_LISTED])}")
    return {"written": written, "skipped": [e.path for e in skipped], "ignored": [str(p) for p in ignored],
            "seconds": seconds, "seconds_per_photo": per_photo}
