"""Stage `evaluate`: test-split scores (dataset-level and paper-style) as DVC metrics and in MLflow."""
from __future__ import annotations

import json
from pathlib import Path
import math

import torch

from unet_ssl import checkpoint
from unet_ssl.config import CLASS_NAMES
from unet_ssl.evaluate import evaluate_model
from unet_ssl.runtime import make_runtime
from unet_ssl.stages.common import FINETUNED, METRICS, PETS, PREDICTIONS, load_tensors, split_indices
from unet_ssl.tracking import log_to_pipeline, stage_run, summary_metrics


def readable(scores: dict) -> dict:
    """Per-class lists -> {class name: value}; NaN (class absent) -> None, valid JSON."""
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    out = {k: clean(v) for k, v in scores.items() if k != "per_class"}
    if "per_class" in scores:
        out["per_class"] = {m: dict(zip(CLASS_NAMES, map(clean, vals))) for m, vals in scores["per_class"].items()}
    return out


def run(params: dict) -> None:
    ev = params["evaluate"]
    runtime = make_runtime(params["runtime"])
    pets = load_tensors(PETS)
    test_idx = split_indices(pets["split"], "test")
    model = checkpoint.load_model(FINETUNED)
    model = runtime.model(model)
    with stage_run("evaluate", params) as run:
        scores, pred = evaluate_model(model, pets["images"][test_idx], pets["masks"][test_idx], runtime,
                                      ev["batch_size"], ev["paper_batch_size"])
        metrics = summary_metrics("test_", scores, CLASS_NAMES)
        run.log_metrics(metrics)
        METRICS.mkdir(exist_ok=True)
        out = {"test": readable(scores)}
        (METRICS / "evaluate.json").write_text(json.dumps(out, indent=2))
        run.log_artifact(METRICS / "evaluate.json")
        PREDICTIONS.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"index": test_idx, "pred": pred.to(torch.uint8)}, PREDICTIONS)
    log_to_pipeline(params, metrics)
    print(f"evaluate: {scores['n_images']} test images, dataset-level F1 {scores['f1']:.3f} Jaccard {scores['jaccard']:.3f} "
          f"(paper-style F1 {scores['paper_style']['f1']:.3f} Jaccard {scores['paper_style']['jaccard']:.3f})")


def evaluate_folder(checkpoint_path: Path, images_dir: Path, trimaps_dir: Path, out: Path, batch_size: int = 16) -> dict:
    """Scores a fine-tuned checkpoint on any folder of images and trimaps (official 1/2/3 values,
    matched by file stem, any size): each pair is resized to the checkpoint's training resolution."""
    from unet_ssl.images import IMAGE_SUFFIXES, BadInputError, decode_rgb, decode_trimap, resize_image, resize_mask, trimap_to_classes
    from unet_ssl.runtime import make_runtime

    ckpt = checkpoint.load(checkpoint_path)
    size = ckpt.get("config", {}).get("image_size", 128)
    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise BadInputError(d, "folder does not exist")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    if not images:
        raise BadInputError(images_dir, "folder holds no images")
    trimaps = {p.stem: p for p in trimaps_dir.glob("*.png")}
    missing = sorted(set(images) - set(trimaps))
    if missing:
        raise BadInputError(trimaps_dir, f"no trimap for {len(missing)} image(s): {', '.join(missing[:5])}")
    xs, ys = [], []
    for stem, path in images.items():
        decoded, trimap = decode_rgb(path), decode_trimap(trimaps[stem])
        if tuple(trimap.shape) != tuple(decoded.pixels.shape[1:]):
            raise BadInputError(trimaps[stem], f"trimap size {tuple(trimap.shape)} differs from image size {tuple(decoded.pixels.shape[1:])}")
        xs.append(resize_image(decoded.pixels, size))
        ys.append(trimap_to_classes(resize_mask(trimap, size)))
    runtime = make_runtime({"device": "auto", "precision": "fp32", "channels_last": False})
    model = runtime.model(checkpoint.load_model(checkpoint_path))
    scores, _ = evaluate_model(model, torch.stack(xs), torch.stack(ys), runtime, batch_size, batch_size)
    result = readable(scores)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"evaluate: {result['n_images']} images at {size}px, F1 {scores['f1']:.3f}, Jaccard {scores['jaccard']:.3f} -> {out}")
    return result
