"""Stage `prepare_pets` / `prepare_pretrain`: raw folders -> tensors + manifests."""
from __future__ import annotations

import logging
from pathlib import Path

from unet_ssl.prepare import prepare_pets, prepare_pretrain
from unet_ssl.stages.common import PETS, PRETRAIN_IMAGES
from unet_ssl.tracking import stage_run

log = logging.getLogger(__name__)


def run_pets(params: dict) -> None:
    data = params["data"]
    with stage_run("prepare_pets", params) as run:
        manifest = prepare_pets(Path(data["raw_dir"]), PETS.parent, data, data["split_seed"])
        counts = manifest["split"].value_counts().to_dict()
        converted = int((manifest["original_mode"] != "RGB").sum())
        run.log_metrics({f"n_{k}": v for k, v in counts.items()} | {"n_converted": converted})
        run.log_artifact(PETS.parent / "input_report.csv")
    print(f"prepare_pets: {len(manifest)} pairs at {data['image_size']}px "
          f"(train {counts.get('train', 0)}, val {counts.get('val', 0)}, test {counts.get('test', 0)}; {converted} converted to RGB)")


def run_pretrain(params: dict) -> None:
    data = params["data"]
    with stage_run("prepare_pretrain", params) as run:
        manifest = prepare_pretrain(Path(data["raw_dir"]), PRETRAIN_IMAGES.parent, data, data["split_seed"])
        run.log_metrics({"n_images": len(manifest), "n_classes": manifest["wnid"].nunique()})
    print(f"prepare_pretrain: {len(manifest)} unlabelled images of {manifest['wnid'].nunique()} classes "
          f"at {data['pretrain_image_size']}px")
