"""Stage `finetune`: Dice-loss fine-tuning from the pretrained checkpoint; logs the model to MLflow."""
from __future__ import annotations

import pandas as pd

from unet_ssl.core import checkpoint
from unet_ssl.core.finetuning import FinetuneConfig, finetune
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.prepared import load_pets
from unet_ssl.data.splits import finetuning_splits
from unet_ssl.paths import FINETUNE_HISTORY, FINETUNE_RESUME, FINETUNED, METRICS, PETS, PRETRAINED
from unet_ssl.tracking.mlflow_runs import stage_run


def run(params: dict) -> None:
    cfg = FinetuneConfig(**params["finetune"])
    runtime = make_runtime(params["runtime"])
    generator = seed_everything(params["seed"])
    pets = load_pets(PETS, cfg.image_size)
    train_idx, val_idx, _ = finetuning_splits(pets["split"], cfg.subset, params["seed"])
    pretrained = checkpoint.load(PRETRAINED)
    tags = {"method": pretrained["method"], "freeze_encoder": cfg.freeze_encoder,
            "skip_connections": cfg.skip_connections, "subset": cfg.subset, "seed": params["seed"]}
    with stage_run("finetune", params, tags) as run:
        run.log_metrics({"n_train": len(train_idx), "n_val": len(val_idx)})
        run.log_data("pets", PETS, "training")
        clock = checkpoint.RunClock()
        resume = FINETUNE_RESUME
        key = checkpoint.resume_key(params, ["seed", "finetune", "runtime"],
                                    {"data": PETS, "pretrained checkpoint": PRETRAINED})
        result = finetune(pets["images"], pets["masks"], train_idx, val_idx, cfg, pretrained, runtime, generator,
                          resume_path=resume, resume_key=key, on_epoch=lambda e, row: run.log_metrics(row, step=e),
                          pretrained_path=PRETRAINED, clock=clock)
        seconds = clock.spent()["seconds"]  # earlier processes of a resumed run included
        checkpoint.save_atomic(result, FINETUNED)
        resume.unlink(missing_ok=True)
        METRICS.mkdir(exist_ok=True)
        pd.DataFrame(result["history"]).to_csv(FINETUNE_HISTORY, index=False)
        run.log_metrics({"finetune_seconds": seconds, "selected_epoch": result["selected_epoch"]})
        best = max((r.get("val_jaccard", float("nan")) for r in result["history"]), default=float("nan"))
        run.log_to_pipeline({"best_val_jaccard": best})
        run.log_artifact(FINETUNED, "checkpoints")
        model = checkpoint.model_from(result)
        run.log_pytorch_model(model, cfg.image_size)
    print(f"finetune: {len(train_idx)} training images ({cfg.subset:.0%} of the labelled set), {cfg.epochs} epochs, "
          f"encoder {'frozen' if cfg.freeze_encoder else 'trained'}, skips {'on' if cfg.skip_connections else 'off'}; "
          f"best val Jaccard {best:.3f} at epoch {result['selected_epoch']}, {seconds:.0f}s")
