"""Supervised fine-tuning on pet trimaps with Dice loss, from a pretrained checkpoint or from
scratch; frozen or trainable encoder (optionally frozen for the first epochs only); keeps the weights
of the best validation epoch."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from unet_ssl.config import FinetuneConfig
from unet_ssl.core import augment, checkpoint
from unet_ssl.core.batchnorm import recompute_batchnorm_stats
from unet_ssl.core.inference import predict
from unet_ssl.core.losses import dice_loss
from unet_ssl.core.metrics import ConfusionMatrix
from unet_ssl.core.model import UNet, UNetConfig, freeze_encoder, train_mode
from unet_ssl.core.runtime import Runtime, check_finite, progress

log = logging.getLogger(__name__)

NUM_CLASSES = 3


def build_model(cfg: FinetuneConfig, pretrained: dict | None, source: Path | None = None) -> UNet:
    """A segmentation U-Net initialised from a pretraining checkpoint: the encoder always, the
    decoder too when it was pretrained (masked autoencoders, dense contrast); the 1x1 head is always fresh."""
    arch = UNetConfig(out_channels=NUM_CLASSES, skip_connections=cfg.skip_connections)
    model = UNet(arch)
    if pretrained is None or not pretrained.get("pretrained_parts"):
        return model
    parts = pretrained["pretrained_parts"]
    checkpoint.check_arch(pretrained["arch"], arch, source or Path("<pretrained>"),
                          ignore=("out_channels",) if "decoder" in parts else ("out_channels", "skip_connections"))
    state = {k: v for k, v in pretrained["model"].items() if k.split(".")[0] in parts}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    return model


def validation_scores(model: UNet, images: torch.Tensor, masks: torch.Tensor, runtime: Runtime,
                      batch_size: int) -> dict:
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(predict(model, images, runtime, batch_size), masks)
    return cm.scores()


def finetune_inputs(images: torch.Tensor, masks: torch.Tensor, cfg: FinetuneConfig, runtime: Runtime,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's inputs from a uint8 batch and its class maps: floats, flipped (and cropped) as
    `cfg.augment` says, drawn where the batch lives, then on the device in the runtime's memory format."""
    x, y = augment.to_float(images), masks
    if cfg.augment != "none":
        x, y = augment.paired_flip_crop(x, y, generator, crop=cfg.augment == "flip_crop")
    return runtime.batch(x), y.to(runtime.device, non_blocking=True)


def finetune_loss(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The Dice loss `finetune` back-propagates for one step on `finetune_inputs`."""
    with runtime.autocast():
        logits = model(images)
    return dice_loss(logits, masks)


def finetune(
    images: torch.Tensor,
    masks: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    cfg: FinetuneConfig,
    pretrained: dict | None,
    runtime: Runtime,
    generator: torch.Generator,
    resume_path: Path | None = None,
    resume_key: dict | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    pretrained_path: Path | None = None,
    clock: checkpoint.RunClock | None = None,
) -> dict:
    """Trains on `images[train_idx]`; returns a checkpoint dict of the selected weights with history.
    `clock` (started by the caller) counts the time of the processes a resumed run went on from."""
    clock = clock or checkpoint.RunClock()
    model = build_model(cfg, pretrained, pretrained_path)
    if cfg.freeze_encoder:
        freeze_encoder(model)
    model = runtime.model(model)
    # A warmed-up encoder is in the optimizer from the start: Adam skips it while it has no gradients.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    run_key = {**asdict(cfg), "n_train": len(train_idx), "n_val": len(val_idx),
               "pretrained_method": (pretrained or {}).get("method", "none"), **(resume_key or {})}
    stateful = {"model": model}
    if cfg.lr_schedule == "cosine":  # stepped once per epoch
        stateful["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    state = checkpoint.resume_training_state(resume_path, run_key, stateful, optimizer, generator, "fine-tuning")
    start_epoch, history, best = (state["epoch"], state["history"], state["best"]) if state else (0, [], None)
    if state:
        clock.resume(state)
    train_images, train_masks = images[train_idx], masks[train_idx]
    val_images, val_masks = images[val_idx], masks[val_idx]
    n = len(train_idx)
    batch_size = min(cfg.batch_size, n)
    if cfg.recompute_bn_stats and state is None:  # once, on a fresh start; a resumed run has them in its state
        recompute_batchnorm_stats(model, train_images, runtime, batch_size)
    last_loss = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        encoder_frozen = cfg.freeze_encoder or epoch <= cfg.warmup_epochs
        if cfg.warmup_epochs:  # LP-FT (Kumar et al. 2022): the fresh decoder and head first, then everything
            freeze_encoder(model, encoder_frozen)
        train_mode(model, encoder_frozen)
        order = torch.randperm(n, generator=generator)
        total, steps = 0.0, 0
        bar = progress(range(0, n, batch_size), f"finetune epoch {epoch}/{cfg.epochs}")
        for step, start in enumerate(bar):
            idx = order[start:start + batch_size]
            x, y = finetune_inputs(train_images[idx], train_masks[idx], cfg, runtime, generator)
            loss = finetune_loss(model, x, y, runtime)
            last_loss = check_finite(loss, "finetune", epoch, step, last_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + last_loss, steps + 1
            bar.set_postfix(loss=f"{last_loss:.4f}")
        row = {"epoch": epoch, "train_loss": total / steps, "lr": optimizer.param_groups[0]["lr"]}
        if "scheduler" in stateful:
            stateful["scheduler"].step()
        if len(val_idx):
            scores = validation_scores(model, val_images, val_masks, runtime, batch_size)
            row |= {"val_f1": scores["f1"], "val_jaccard": scores["jaccard"]}
            if cfg.select_best and (best is None or scores["jaccard"] > best["val_jaccard"]):
                best = {"epoch": epoch, "val_jaccard": scores["jaccard"],
                        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        if resume_path is not None:
            checkpoint.save_training_state(resume_path, run_key, epoch, stateful, optimizer, generator,
                                           history=history, best=best, clock=clock.spent())
    model = model.cpu()
    selected_epoch = cfg.epochs
    if best is not None:
        model.load_state_dict(best["model"])
        selected_epoch = best["epoch"]
    return checkpoint.model_checkpoint(model, history=history, selected_epoch=selected_epoch,
                                       config=asdict(cfg), pretrained_method=run_key["pretrained_method"])
