"""Stage `prepare_pets` / `prepare_pretrain`: raw folders -> tensors + manifests, with an input
report (converted, ignored, excluded, skipped files) that DVC versions and MLflow keeps."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from unet_ssl.data.preparation import prepare_pets, prepare_pretrain
from unet_ssl.paths import PETS, PETS_INPUT_REPORT, PRETRAIN_IMAGES, PRETRAIN_INPUT_REPORT
from unet_ssl.tracking.mlflow_runs import StageRun, stage_run

log = logging.getLogger(__name__)
ACTIONS = ("converted", "ignored", "excluded", "skipped")


def log_input_report(run: StageRun, report_file: Path) -> dict[str, int]:
    """Counts of each action as metrics, the report itself as an artifact; returns the counts."""
    actions = pd.read_csv(report_file)["action"]
    counts = {a: int((actions == a).sum()) for a in ACTIONS}
    run.log_metrics({f"n_{a}": n for a, n in counts.items()})
    run.log_artifact(report_file, "input_report")
    if counts["skipped"]:
        log.warning("%d unusable input files were left out (data.on_bad_input: skip); they are listed in %s",
                    counts["skipped"], report_file)
    return counts


def summary(counts: dict[str, int], report_file: Path) -> str:
    listed = ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    return f"inputs {listed} (see {report_file})" if listed else "no input converted, ignored or skipped"


def run_pets(params: dict) -> None:
    data = params["data"]
    with stage_run("prepare_pets", params) as run:
        run.log_data("raw", data["raw_dir"], "raw")
        manifest = prepare_pets(Path(data["raw_dir"]), PETS.parent, data, data["split_seed"])
        split_counts = manifest["split"].value_counts().to_dict()
        run.log_metrics({f"n_{k}": v for k, v in split_counts.items()})
        counts = log_input_report(run, PETS.parent / PETS_INPUT_REPORT)
    print(f"prepare_pets: {len(manifest)} pairs at {data['image_size']}px (train {split_counts.get('train', 0)}, "
          f"val {split_counts.get('val', 0)}, test {split_counts.get('test', 0)}); "
          f"{summary(counts, PETS.parent / PETS_INPUT_REPORT)}")


def run_pretrain(params: dict) -> None:
    data = params["data"]
    with stage_run("prepare_pretrain", params) as run:
        run.log_data("raw", data["raw_dir"], "raw")
        manifest = prepare_pretrain(Path(data["raw_dir"]), PRETRAIN_IMAGES.parent, data, data["split_seed"])
        run.log_metrics({"n_images": len(manifest), "n_classes": manifest["wnid"].nunique()})
        counts = log_input_report(run, PRETRAIN_IMAGES.parent / PRETRAIN_INPUT_REPORT)
    summary_line = summary(counts, PRETRAIN_IMAGES.parent / PRETRAIN_INPUT_REPORT)
    print(f"prepare_pretrain: {len(manifest)} unlabelled images of {manifest['wnid'].nunique()} classes "
          f"at {data['pretrain_image_size']}px; {summary_line}")
