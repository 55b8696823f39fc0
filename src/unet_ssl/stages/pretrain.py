"""Stage `pretrain`: self-supervised pretraining (or none), checkpoint + per-epoch loss.

Under `torchrun --nproc_per_node=K -m unet_ssl pretrain` every process trains its shard of each
global batch; rank 0 alone tracks in MLflow and writes the checkpoint and metrics."""
from __future__ import annotations

import contextlib

import pandas as pd

from unet_ssl.core import checkpoint, distributed
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.prepared import load_tensors
from unet_ssl.paths import METRICS, PRETRAIN_HISTORY, PRETRAIN_IMAGES, PRETRAIN_RESUME, PRETRAINED
from unet_ssl.tracking.mlflow_runs import StageRun, stage_run


def run(params: dict) -> None:
    ctx = distributed.init_from_env()
    try:
        _run(params, ctx)
    finally:
        distributed.shutdown()


def _run(params: dict, ctx: distributed.Context) -> None:
    cfg = PretrainConfig(**params["pretrain"])
    skip = params["finetune"]["skip_connections"]
    runtime = make_runtime(params["runtime"])
    generator = seed_everything(params["seed"])
    tags = {"method": cfg.method, "skip_connections": skip, "seed": params["seed"], "world_size": ctx.world_size}
    tracked = stage_run("pretrain", params, tags) if ctx.is_main else contextlib.nullcontext(StageRun())
    with tracked as run:
        images = load_tensors(PRETRAIN_IMAGES)["images"] if cfg.method != "none" else None
        if images is not None:
            run.log_data("pretrain", PRETRAIN_IMAGES, "training")
        clock = checkpoint.RunClock()
        resume = PRETRAIN_RESUME
        key = checkpoint.resume_key(params, ["seed", "pretrain", "finetune.skip_connections", "runtime"],
                                    {"data": PRETRAIN_IMAGES} if images is not None else {})
        result = pretrain(images, cfg, skip, runtime, generator, resume_path=resume, resume_key=key,
                          on_epoch=lambda e, row: run.log_metrics({"loss": row["loss"]}, step=e), clock=clock)
        seconds = clock.spent()["seconds"]  # earlier processes of a resumed run included
        if ctx.is_main:
            checkpoint.save_atomic(result, PRETRAINED)
            resume.unlink(missing_ok=True)
            METRICS.mkdir(exist_ok=True)
            history = pd.DataFrame(result["history"], columns=["epoch", "loss"])
            history.to_csv(PRETRAIN_HISTORY, index=False)
            run.log_metrics({"pretrain_seconds": seconds})
            run.log_artifact(PRETRAINED, "checkpoints")
    distributed.barrier()  # no rank exits while rank 0 still writes
    if not ctx.is_main:
        return
    n = 0 if images is None else images.shape[0]
    last = result["history"][-1]["loss"] if result["history"] else float("nan")
    print(f"pretrain: {cfg.method} on {n} images, {cfg.epochs if n else 0} epochs at {cfg.image_size}px, "
          f"final loss {last:.4f}, {seconds:.0f}s on {runtime.device} ({runtime.precision}"
          f"{f', {ctx.world_size} processes' if ctx.active else ''})")
