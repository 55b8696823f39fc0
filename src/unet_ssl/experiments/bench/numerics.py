"""The bf16 precision experiment of `unet-ssl bench --numerics`: fine-tuning (or the pretraining it starts from)
in fp32 and under bf16 autocast with the same seeds, and the verdict, which reads validation alone."""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable

import numpy as np

from unet_ssl.config import FinetuneConfig
from unet_ssl.core import checkpoint
from unet_ssl.core.finetuning import NUM_CLASSES, finetune
from unet_ssl.core.inference import predict
from unet_ssl.core.metrics import ConfusionMatrix
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.core.stats import paired_bootstrap, per_image_confusion
from unet_ssl.data.splits import finetuning_splits
from unet_ssl.experiments.bench.loading import BenchData


def finetune_settings(cfg: FinetuneConfig) -> str:
    return (f"{cfg.image_size} px, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.lr_schedule}), augmentation "
            f"{cfg.augment}, encoder {'frozen' if cfg.freeze_encoder else 'trained'}, skips "
            f"{'on' if cfg.skip_connections else 'off'}, subset {cfg.subset:g}")


def pretrain_settings(cfg: PretrainConfig, n_photos: int) -> str:
    return (f"{cfg.method} on {n_photos} photos, {cfg.epochs} epochs at {cfg.image_size} px, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, temperature {cfg.temperature:g}")


def bf16_numerics(data: BenchData, params: dict, seeds: list[int], epochs: int, device: str = "auto",
                  log: Callable[[str], None] = print, stage: str = "finetune") -> list[dict]:
    """Trains in fp32 and in bf16 with the same seeds (pipeline settings otherwise) and scores the
    best-validation weights on the validation split (which decides) and the test split (shown only),
    keeping per-image confusion matrices for paired bootstrap intervals. `stage` "finetune": fine-tuning
    from scratch in each precision. "pretrain": pretraining (params' `pretrain` group, on the prepared
    photos) in each precision, then the same fine-tuning from each checkpoint in the params' own precision,
    so the scores differ only by the pretraining's precision; `seconds` is then the pretraining's."""
    cfg = FinetuneConfig(**{**params["finetune"], "epochs": epochs})
    pretrain_cfg = PretrainConfig(**params["pretrain"])
    rows = []
    for seed in seeds:
        train_idx, val_idx, test_idx = finetuning_splits(data.split, cfg.subset, seed)
        for precision in ("fp32", "bf16"):
            runtime = make_runtime({**params["runtime"], "device": device, "precision": precision}, emulated_bf16=True)
            generator = seed_everything(seed)
            row = {"seed": seed, "precision": precision, "stage": stage, "n_train": len(train_idx),
                   "n_val": len(val_idx), "n_test": len(test_idx), "channels_last": runtime.channels_last,
                   "settings": finetune_settings(cfg)}
            start = time.perf_counter()
            pretrained = None
            if stage == "pretrain":
                pretrained = pretrain(data.pretrain, pretrain_cfg, cfg.skip_connections, runtime, generator)
                row |= {"seconds": time.perf_counter() - start,
                        "final_pretrain_loss": pretrained["history"][-1]["loss"],
                        "pretrain_settings": pretrain_settings(pretrain_cfg, data.pretrain.shape[0]),
                        "finetune_precision": params["runtime"]["precision"]}
                runtime = make_runtime({**params["runtime"], "device": device})
                generator = seed_everything(seed)
            result = finetune(data.pets, data.masks, train_idx, val_idx, cfg, pretrained, runtime, generator)
            if stage == "finetune":
                row["seconds"] = time.perf_counter() - start
            row |= {"final_train_loss": result["history"][-1]["train_loss"], "selected_epoch": result["selected_epoch"]}
            model = runtime.model(checkpoint.model_from(result))
            for split, idx in (("val", val_idx), ("test", test_idx)):
                pred = predict(model, data.pets[idx], runtime, cfg.batch_size)
                cm = ConfusionMatrix(NUM_CLASSES)
                cm.update(pred, data.masks[idx])
                scores = cm.scores()
                row |= {f"{split}_jaccard": scores["jaccard"], f"{split}_f1": scores["f1"], f"{split}_pred": pred,
                        f"{split}_confusion": per_image_confusion(pred, data.masks[idx], NUM_CLASSES).numpy()}
            rows.append(row)
            log(f"numerics ({stage}) seed {seed} {precision}: val Jaccard {row['val_jaccard']:.4f} (test, shown "
                f"only: {row['test_jaccard']:.4f}), {row['seconds']:.0f}s")
    return rows


def numerics_verdict(rows: list[dict]) -> dict:
    """bf16 against fp32, paired by seed: mean differences, and where per-image matrices were kept a
    bootstrap interval over seeds and images. The decision reads validation alone: bf16 is allowed as the
    default unless its validation interval lies below zero ('worse'); the test comparison is information.
    The speed-up is the median of the per-seed wall-clock ratios, so one seed slowed by other jobs on
    the machine does not swing it."""
    by = {(r["seed"], r["precision"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for split in ("val", "test"):
        metric = f"{split}_jaccard"
        diffs = [by[s, "bf16"][metric] - by[s, "fp32"][metric] for s in seeds]
        fp32 = [by[s, "fp32"][metric] for s in seeds]
        out[metric] = {"mean_diff": statistics.fmean(diffs), "max_abs_diff": max(map(abs, diffs)),
                       "fp32_seed_std": statistics.stdev(fp32) if len(fp32) > 1 else float("nan")}
        if all(f"{split}_confusion" in r for r in rows):
            out[metric]["paired"] = paired_bootstrap(np.stack([by[s, "fp32"][f"{split}_confusion"] for s in seeds]),
                                                     np.stack([by[s, "bf16"][f"{split}_confusion"] for s in seeds]))
    out["speedup"] = statistics.median(by[s, "fp32"]["seconds"] / by[s, "bf16"]["seconds"] for s in seeds)
    out["speedup_seeds"] = len(seeds)
    if all("test_pred" in r for r in rows):
        out["pixel_agreement"] = statistics.fmean(
            (by[s, "fp32"]["test_pred"] == by[s, "bf16"]["test_pred"]).float().mean().item() for s in seeds)
        out["predicted_classes"] = sorted({c for r in rows for c in r["test_pred"].unique().tolist()})
        pairs = list(itertools.combinations(seeds, 2))
        if pairs:  # the same comparison between fp32 runs of different seeds: what "noise" looks like per pixel
            out["seed_pixel_agreement"] = statistics.fmean(
                (by[a, "fp32"]["test_pred"] == by[b, "fp32"]["test_pred"]).float().mean().item() for a, b in pairs)
    paired = out["val_jaccard"].get("paired")
    out["bf16_allowed"] = paired is not None and paired.verdict != "worse"
    return out
