"""The grid's runs (grid/dvc.yaml): its params file written from a profile, its own data, one pretraining
run per plan entry, one fine-tuning + test run per plan entry. Each run is an MLflow stage run tagged
with method, freeze_encoder, skip_connections, subset and seed, and leaves a JSON record beside its
checkpoint that the tables read.

The grid runs from the repository root and keeps everything under grid/, apart from the reports, so it
never touches the main pipeline's files."""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import checkpoint
from unet_ssl.core.finetuning import FinetuneConfig, finetune
from unet_ssl.core.inference import evaluate_model, predict
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.resize import resize_image
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.core.stats import confusion_record, per_image_confusion
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain
from unet_ssl.data.prepared import load_pets, load_tensors
from unet_ssl.data.splits import finetuning_splits, split_indices
from unet_ssl.experiments import grid_plan
from unet_ssl.paths import (
    GRID_FINETUNED_CHECKPOINT,
    GRID_PARAMS,
    GRID_PETS,
    GRID_PRETRAIN_IMAGES,
    GRID_PRETRAIN_RECORD,
    GRID_PRETRAIN_VARIANTS,
    GRID_PRETRAINED,
    GRID_PRETRAINED_CHECKPOINT,
    GRID_RESULT,
    GRID_RUNS,
    GRID_VALIDATION,
    PRETRAIN_FOLDER,
    PRETRAIN_TENSORS,
    grid_resume,
)
from unet_ssl.render import score_record
from unet_ssl.tracking.mlflow_runs import stage_run, summary_metrics

PLAN_SECTIONS = ("profile", "plan")


class GridPlanError(ValueError):
    """grid/params.json does not match its profile or the cells, or names no such run."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def use_profile(profile: Path, out: Path = GRID_PARAMS) -> dict:
    """Writes the grid's params file: the profile as it is, plus `profile` (its path) and `plan`
    (every run, derived from the profile and the cells of `unet_ssl.experiments.grid_plan`). It is JSON
    (paths.GRID_PARAMS says why), so it holds no comments: the profile is the file to read and edit."""
    params = yaml.safe_load(Path(profile).read_text())
    for section in PLAN_SECTIONS:
        if section in params:
            raise GridPlanError(f"{profile}: `{section}` is written by `unet-ssl grid use`; remove it from the profile")
    params["profile"] = str(profile)
    params["plan"] = grid_plan.plan(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, indent=2) + "\n")
    return params


def check_plan(params: dict) -> None:
    """Stops a grid whose params file no longer matches its profile or the cell definitions."""
    profile = Path(params["profile"])
    if profile.is_file():
        settings = {k: v for k, v in params.items() if k not in PLAN_SECTIONS}
        if yaml.safe_load(profile.read_text()) != settings:
            raise GridPlanError(f"{GRID_PARAMS} is out of date: {profile} changed since; "
                                f"run `unet-ssl grid use {profile}`")
    if params["plan"] != grid_plan.plan(params):
        raise GridPlanError(f"{GRID_PARAMS} holds a stale plan (the cells in src/unet_ssl/experiments/grid_plan.py "
                            f"changed); run `unet-ssl grid use {profile}`")


def plan_entry(params: dict, kind: str, key: str) -> dict:
    """A run of the plan; `pretrain` finds the variants' pretraining runs too (one command, two stages)."""
    check_plan(params)
    runs = params["plan"][kind] | (params["plan"]["pretrain_variant"] if kind == "pretrain" else {})
    if key not in runs:
        raise GridPlanError(f"{GRID_PARAMS} plans no {kind} run named {key!r}")
    return runs[key]


def run_dir(entry: dict) -> Path:
    return GRID_RUNS / entry["dir"]


def prepare(params: dict) -> None:
    """The grid's pets and pretraining photos at the profile's sizes, checked by the same
    great-expectations suites as the main pipeline's; fails (after writing the report) on any failure."""
    from unet_ssl.data.expectations import pets_suites, pretrain_suites, run_suite

    data, raw = params["data"], Path(params["data"]["raw_dir"])
    with stage_run("grid_prepare", {k: params[k] for k in ("data", "profile")}) as run:
        run.log_data("raw", raw, "raw")
        pets = prepare_pets(raw, GRID_PETS.parent, data, data["split_seed"])
        photos = prepare_pretrain(raw, GRID_PRETRAIN_IMAGES.parent, data, data["split_seed"])
        rows = [row for suite in pets_suites(pets, data) + pretrain_suites(photos) for row in run_suite(suite)]
        failed = [r for r in rows if not r["success"]]
        lines = [f"# Grid data validation ({params['profile']})", "",
                 f"{len(rows) - len(failed)} of {len(rows)} great-expectations checks passed on {len(pets)} pets and "
                 f"{len(photos)} pretraining photos.", ""]
        lines += [f"- FAILED {r['suite']}: {r['expectation']}({r['column']}): {r['details']}" for r in failed]
        GRID_VALIDATION.write_text("\n".join(lines) + "\n")
        run.log_metrics({"checks": len(rows), "failed_checks": len(failed), "n_pets": len(pets),
                         "n_photos": len(photos)})
        if failed:
            raise RuntimeError(f"grid data validation failed; see {GRID_VALIDATION}")
    counts = pets["split"].value_counts().to_dict()
    print(f"grid prepare: {len(pets)} pets at {data['image_size']}px (train {counts.get('train', 0)}, "
          f"val {counts.get('val', 0)}, test {counts.get('test', 0)}), {len(photos)} pretraining photos at "
          f"{data['pretrain_image_size']}px; "
          f"{len(rows)} checks passed")


def variant_photos(params: dict, entry: dict, folder: Path) -> Path:
    """A variant's pretraining photos as one tensor file in `folder`: a seeded subset of `photos` of the raw
    photos (the prepared ones when it sets none; the subset of N holds the prepared ones when N is larger),
    then the training split's pets at the pretraining size when `training_pets` (never validation or test)."""
    data = params["data"]
    if entry["photos"] is None:
        images = load_tensors(GRID_PRETRAIN_IMAGES)["images"]
    else:
        prepare_pretrain(Path(data["raw_dir"]), folder, data | {"pretrain_limit": entry["photos"]}, data["split_seed"])
        images = load_tensors(folder / PRETRAIN_TENSORS)["images"]
    if entry["training_pets"]:
        pets = load_tensors(GRID_PETS)
        train = pets["images"][split_indices(pets["split"], "train")]
        size = images.shape[-1]
        train = train if train.shape[-1] == size else torch.stack([resize_image(i, size) for i in train])
        images = torch.cat([images, train])
    torch.save({"images": images}, folder / PRETRAIN_TENSORS)
    return folder / PRETRAIN_TENSORS


def variant_sources(params: dict, entry: dict) -> list[Path]:
    """What a variant's photos are made from, for MLflow: the raw photos or the prepared ones, and the pets."""
    photos = GRID_PRETRAIN_IMAGES if entry["photos"] is None else Path(params["data"]["raw_dir"]) / PRETRAIN_FOLDER
    return [photos, *([GRID_PETS] if entry["training_pets"] else [])]


def pretrain_run(params: dict, key: str) -> None:
    entry = plan_entry(params, "pretrain", key)
    cfg = PretrainConfig(**entry["pretrain"])
    seed, skips = entry["seed"], entry["skip_connections"]
    runtime = make_runtime(params["runtime"])
    generator = seed_everything(seed)
    run_params = {"seed": seed, "data": params["data"], "pretrain": entry["pretrain"],
                  "finetune": {"skip_connections": skips}, "runtime": params["runtime"],
                  "grid": {"profile": params["profile"], "run": key}}
    tags = {"method": cfg.method, "projection": cfg.projection, "skip_connections": skips, "seed": seed,
            "grid_profile": params["profile"], "grid_run": key}
    if "variant" in entry:
        run_params["grid"] |= {k: entry[k] for k in ("variant", "photos", "training_pets")}
        tags |= {"variant": entry["variant"]}
    out = (GRID_PRETRAIN_VARIANTS if "variant" in entry else GRID_PRETRAINED) / key
    out.mkdir(parents=True, exist_ok=True)
    started = now()
    with stage_run("grid_pretrain", run_params, tags) as run, tempfile.TemporaryDirectory() as scratch:
        photos = GRID_PRETRAIN_IMAGES if "variant" not in entry else variant_photos(params, entry, Path(scratch))
        images = load_tensors(photos)["images"] if cfg.method != "none" else None
        if images is not None:
            run.log_data("pretrain", photos if "variant" not in entry else variant_sources(params, entry), "training")
        clock = checkpoint.RunClock()
        resume = grid_resume("pretrain", key)
        identity = checkpoint.resume_key(run_params, ["seed", "pretrain", "finetune", "runtime"],
                                         {"data": photos} if images is not None else {})
        result = pretrain(images, cfg, skips, runtime, generator, resume_path=resume, resume_key=identity,
                          on_epoch=lambda e, row: run.log_metrics({"loss": row["loss"]}, step=e), clock=clock)
        spent = clock.spent()
        seconds = spent["seconds"]
        checkpoint.save_atomic(result, out / GRID_PRETRAINED_CHECKPOINT)
        resume.unlink(missing_ok=True)
        run.log_metrics({"pretrain_seconds": seconds})
        record = {"key": key, "seed": seed, "skip_connections": skips, "config": entry["pretrain"],
                  "n_images": 0 if images is None else int(images.shape[0]), "history": result["history"],
                  **spent, "resumed_after_epoch": clock.resumed_after_epoch, "started": started, "finished": now(),
                  "device": str(runtime.device), "mlflow_run_id": run.run_id}
        (out / GRID_PRETRAIN_RECORD).write_text(json.dumps(record, indent=2))
        run.log_artifact(out / GRID_PRETRAIN_RECORD)
    print(f"grid pretrain {key}: {cfg.method} on {record['n_images']} photos, {seconds:.0f}s on {runtime.device}")


def record_json(record: dict) -> str:
    """Indented JSON with every list of plain integers on one line (one line per test image's
    confusion matrix), so a run record stays readable."""
    return re.sub(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]",
                  json.dumps(record, indent=2))


def finetune_run(params: dict, key: str) -> None:
    """Fine-tunes one cell for one seed from its planned pretraining checkpoint, scores the selected
    weights on the test split (both metric views) and writes finetuned.pt + result.json."""
    entry = plan_entry(params, "finetune", key)
    cell = grid_plan.cell_by_name(entry["cell"])
    cfg = FinetuneConfig(**entry["finetune"])
    seed = entry["seed"]
    pets = load_pets(GRID_PETS, cfg.image_size)
    train_idx, val_idx, test_idx = finetuning_splits(pets["split"], cfg.subset, seed)
    source = Path(entry["pretrained"])
    pretrained_path = source / GRID_PRETRAINED_CHECKPOINT
    pretrained = checkpoint.load(pretrained_path)
    pretraining = json.loads((source / GRID_PRETRAIN_RECORD).read_text())
    runtime = make_runtime(entry["runtime"])  # the profile's runtime with grid.finetune_runtime applied
    generator = seed_everything(seed)
    tables = [t.name for t in grid_plan.TABLES.values() if cell in t.cells]
    run_params = {"seed": seed, "data": params["data"], "pretrain": pretraining["config"],
                  "finetune": entry["finetune"], "evaluate": params["evaluate"], "runtime": entry["runtime"],
                  "grid": {"profile": params["profile"], "cell": cell.name, "run": key,
                           "pretrain_run": entry["pretrain"]}}
    tags = {"method": cell.method, "projection": cell.projection, "freeze_encoder": cell.freeze_encoder,
            "skip_connections": cell.skip_connections, "subset": cell.subset, "recompute_bn_stats": cell.recompute_bn,
            "warmup_epochs": cell.warmup_epochs, "seed": seed, "grid_cell": cell.name, "variant": cell.variant,
            "grid_tables": ",".join(tables), "grid_profile": params["profile"], "grid_run": key}
    out = run_dir(entry)
    out.mkdir(parents=True, exist_ok=True)
    started = now()
    with stage_run("grid_finetune", run_params, tags) as run:
        run.log_metrics({"n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx)})
        run.log_data("pets", GRID_PETS, "training")
        clock = checkpoint.RunClock()
        resume = grid_resume("finetune", key)
        identity = checkpoint.resume_key(run_params, ["seed", "pretrain", "finetune", "runtime"],
                                         {"data": GRID_PETS, "pretrained checkpoint": pretrained_path})
        result = finetune(pets["images"], pets["masks"], train_idx, val_idx, cfg, pretrained, runtime, generator,
                          resume_path=resume, resume_key=identity, on_epoch=lambda e, row: run.log_metrics(row, step=e),
                          pretrained_path=pretrained_path, clock=clock)
        train_seconds = clock.spent()["seconds"]
        model = runtime.model(checkpoint.model_from(result))
        ev = params["evaluate"]
        scores, pred = evaluate_model(model, pets["images"][test_idx], pets["masks"][test_idx], runtime,
                                      ev["batch_size"], ev["paper_batch_size"])
        per_image = per_image_confusion(pred, pets["masks"][test_idx], len(CLASS_NAMES))
        val_pred = predict(model, pets["images"][val_idx], runtime, ev["batch_size"])  # matrices only, no scores
        val_per_image = per_image_confusion(val_pred, pets["masks"][val_idx], len(CLASS_NAMES))
        spent = clock.spent()
        seconds = spent["seconds"]
        checkpoint.save_atomic(result, out / GRID_FINETUNED_CHECKPOINT)
        resume.unlink(missing_ok=True)
        run.log_metrics(summary_metrics("test_", scores, CLASS_NAMES) | {"finetune_seconds": train_seconds,
                                                                        "selected_epoch": result["selected_epoch"]})
        record = {
            "key": key, "cell": cell.name, "tables": tables, "seed": seed, "method": cell.method,
            "projection": cell.projection, "variant": cell.variant, "freeze_encoder": cell.freeze_encoder,
            "skip_connections": cell.skip_connections, "subset": cell.subset, "recompute_bn_stats": cell.recompute_bn,
            "warmup_epochs": cell.warmup_epochs, "precision": runtime.precision,
            "profile": params["profile"],
            "pretrain_run": entry["pretrain"], "pretrain_dir": entry["pretrained"],
            "pretrain_mlflow_run_id": pretraining["mlflow_run_id"],
            "pretrain_seconds": pretraining["seconds"], "finetune": entry["finetune"],
            "n_train": len(train_idx), "n_val": len(val_idx), "test": score_record(scores),
            "test_confusion": confusion_record(test_idx, per_image),
            "val_confusion": confusion_record(val_idx, val_per_image),  # selected weights: paired validation tests
            "selected_epoch": result["selected_epoch"], "history": result["history"],
            **spent, "resumed_after_epoch": clock.resumed_after_epoch, "started": started, "finished": now(),
            "device": str(runtime.device), "mlflow_run_id": run.run_id,
        }
        (out / GRID_RESULT).write_text(record_json(record))
        run.log_artifact(out / GRID_RESULT)
    print(f"grid finetune {key}: {len(train_idx)} training pets, test Jaccard {scores['jaccard']:.3f} "
          f"(paper-style {scores['paper_style']['jaccard']:.3f}), {seconds:.0f}s")


def same_finetuning(recorded: dict, planned: dict) -> bool:
    """Whether a run record's fine-tuning settings are the plan's; a record made before a setting existed
    ran with its default (finetune.warmup_epochs: no warm-up)."""
    return asdict(FinetuneConfig(**recorded)) == asdict(FinetuneConfig(**planned))


def results(params: dict, cells: list[grid_plan.Cell] | None = None) -> pd.DataFrame:
    """One row per planned fine-tuning run that has a result (of `cells`, or all), newest plan only:
    leftovers of earlier profiles in grid/runs/ are ignored, also where the new plan uses their folder
    (a record of another profile or other fine-tuning settings, until the run is made again)."""
    check_plan(params)
    names = None if cells is None else {c.name for c in cells}
    rows = []
    for entry in params["plan"]["finetune"].values():
        path = run_dir(entry) / GRID_RESULT
        if (names is None or entry["cell"] in names) and path.is_file():
            record = json.loads(path.read_text())
            if record["profile"] == params["profile"] and same_finetuning(record["finetune"], entry["finetune"]):
                rows.append(record | {"path": str(path.parent)})
    return pd.DataFrame(rows)


def summary(params: dict) -> str:
    """How many runs the plan holds, by kind, for planning a grid's wall time."""
    plan = params["plan"]
    by_subset = (pd.Series([e["finetune"]["subset"] for e in plan["finetune"].values()]).value_counts()
                 .sort_index(ascending=False))
    methods = pd.Series([e["pretrain"]["method"] for e in plan["pretrain"].values()]).value_counts()
    variants = f" + {len(plan['pretrain_variant'])} of pretraining variants" if plan["pretrain_variant"] else ""
    return (f"{params['profile']}: {len(plan['pretrain'])} pretraining runs "
            f"({', '.join(f'{m} {n}' for m, n in methods.items())}){variants}, "
            f"{len(plan['finetune'])} fine-tuning runs "
            f"({', '.join(f'subset {s:g}: {n}' for s, n in by_subset.items())}), "
            f"seeds {params['grid']['seeds']}")
