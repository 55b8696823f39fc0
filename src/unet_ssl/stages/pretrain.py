"""Stage `pretrain`: self-supervised pretraining (or none), checkpoint + per-epoch loss."""
from __future__ import annotations

import time

import pandas as pd

from unet_ssl import checkpoint
from unet_ssl.pretrain import PretrainConfig, pretrain
from unet_ssl.runtime import make_runtime, seed_everything
from unet_ssl.stages.common import METRICS, PRETRAIN_IMAGES, PRETRAINED, RESUME, load_tensors
from unet_ssl.tracking import stage_run


def run(params: dict) -> None:
    cfg = PretrainConfig(**params["pretrain"])
    skip = params["finetune"]["skip_connections"]
    runtime = make_runtime(params["runtime"])
    generator = seed_everything(params["seed"])
    tags = {"method": cfg.method, "skip_connections": skip, "seed": params["seed"]}
    with stage_run("pretrain", params, tags) as run:
        images = load_tensors(PRETRAIN_IMAGES)["images"] if cfg.method != "none" else None
        start = time.perf_counter()
        resume = RESUME / "pretrain.pt"
        result = pretrain(images, cfg, skip, runtime, generator,
                          resume_path=resume, on_epoch=lambda e, row: run.log_metrics({"loss": row["loss"]}, step=e))
        seconds = time.perf_counter() - start
        checkpoint.save_atomic(result, PRETRAINED)
        resume.unlink(missing_ok=True)
        METRICS.mkdir(exist_ok=True)
        pd.DataFrame(result["history"], columns=["epoch", "loss"]).to_csv(METRICS / "pretrain_history.csv", index=False)
        run.log_metrics({"pretrain_seconds": seconds})
        run.log_artifact(PRETRAINED, "checkpoints")
    n = 0 if images is None else images.shape[0]
    last = result["history"][-1]["loss"] if result["history"] else float("nan")
    print(f"pretrain: {cfg.method} on {n} images, {cfg.epochs if n else 0} epochs at {cfg.image_size}px, "
          f"final loss {last:.4f}, {seconds:.0f}s on {runtime.device} ({runtime.precision})")

