"""Self-supervised pretraining of the U-Net: SimCLR on the encoder, or a masked autoencoder on the
whole network. One loop, resumable from the last complete epoch. Depends on torch alone."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from unet_ssl import augment, checkpoint
from unet_ssl.losses import nt_xent_loss, reconstruction_loss
from unet_ssl.model import ProjectionHead, UNet, UNetConfig
from unet_ssl.runtime import Runtime, check_finite

log = logging.getLogger(__name__)

METHODS = ("simclr", "mae_patch", "mae_pixel", "mae_none", "none")


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simclr"
    epochs: int = 20
    batch_size: int = 384
    lr: float = 1e-3
    temperature: float = 0.2
    image_size: int = 64
    projection: str = "bottleneck"  # or "multi_level"
    mask_patch: int = 20
    mask_ratio: float = 0.75
    masked_only_loss: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"pretrain.method must be one of {METHODS}, got {self.method!r}")
        if self.projection not in ("bottleneck", "multi_level"):
            raise ValueError(f"pretrain.projection must be 'bottleneck' or 'multi_level', got {self.projection!r}")


def simclr_step(model: UNet, head: ProjectionHead, batch: torch.Tensor, cfg: PretrainConfig,
                generator: torch.Generator, runtime: Runtime) -> torch.Tensor:
    """Two random views of every image; NT-Xent on their projections."""
    views = torch.cat([augment.simclr_view(batch, cfg.image_size, generator) for _ in range(2)])
    views = runtime.batch(views)
    with runtime.autocast():
        z = head(model.encoder(views))
    z_a, z_b = z.chunk(2)
    return nt_xent_loss(z_a, z_b, cfg.temperature)


def mae_step(model: UNet, batch: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator,
             runtime: Runtime) -> torch.Tensor:
    """Blackens the masked pixels and reconstructs the whole image (loss over all pixels, or masked only)."""
    images = augment.to_float(batch)
    if images.shape[-1] != cfg.image_size:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    mask = augment.make_mask(cfg.method.removeprefix("mae_"), images.shape[0], cfg.image_size, cfg.image_size,
                             generator, cfg.mask_patch, cfg.mask_ratio)
    images, mask = runtime.batch(images), runtime.batch(mask)
    with runtime.autocast():
        reconstruction = model(images * (1 - mask))
    return reconstruction_loss(reconstruction, images, mask, cfg.masked_only_loss)


def pretrain(
    images: torch.Tensor | None,
    cfg: PretrainConfig,
    skip_connections: bool,
    runtime: Runtime,
    generator: torch.Generator,
    resume_path: Path | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict:
    """Trains for `cfg.epochs` and returns a checkpoint dict (format of `checkpoint.model_checkpoint`).

    `images` is uint8 (N, 3, H, W) in memory (None for method 'none'). With `resume_path`, the state is saved there after
    every epoch and a run with the same config picks up after the last complete epoch.
    """
    is_mae = cfg.method.startswith("mae_")
    arch = UNetConfig(out_channels=3, skip_connections=skip_connections)
    model = runtime.model(UNet(arch))
    head = runtime.model(ProjectionHead(arch.widths, multi_level=cfg.projection == "multi_level"))
    if cfg.method == "none":
        return checkpoint.model_checkpoint(model, method="none", pretrained_parts=[], history=[])
    params = list(model.parameters()) if is_mae else [*model.encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    run_key = {**asdict(cfg), "skip_connections": skip_connections, "n_images": images.shape[0]}
    start_epoch, history = 0, []
    if resume_path is not None and Path(resume_path).is_file():
        state = checkpoint.load(resume_path)
        if state.get("run_key") == run_key:
            model.load_state_dict(state["model"])
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            generator.set_state(state["generator"])
            start_epoch, history = state["epoch"], state["history"]
            log.info("resuming pretraining from %s after epoch %d", resume_path, start_epoch)
        else:
            log.warning("ignoring %s: it was written with other settings", resume_path)
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"pretraining needs at least 2 images, got {n}")
    batch_size = min(cfg.batch_size, n)
    steps = n // batch_size  # drop the ragged last batch: NT-Xent wants full batches
    last_loss = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train(), head.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        bar = tqdm(range(steps), desc=f"pretrain {cfg.method} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for step in bar:
            batch = images[order[step * batch_size:(step + 1) * batch_size]]
            if is_mae:
                loss = mae_step(model, batch, cfg, generator, runtime)
            else:
                loss = simclr_step(model, head, batch, cfg, generator, runtime)
            last_loss = check_finite(loss, f"pretrain {cfg.method}", epoch, step, last_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += last_loss
            bar.set_postfix(loss=f"{last_loss:.4f}")
        row = {"epoch": epoch, "loss": total / steps}
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        if resume_path is not None:
            checkpoint.save_atomic({
                "format_version": checkpoint.FORMAT_VERSION, "run_key": run_key, "epoch": epoch, "history": history,
                "model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
            }, resume_path)
    parts = ["encoder", "decoder"] if is_mae else ["encoder"]
    return checkpoint.model_checkpoint(model.cpu(), method=cfg.method, pretrained_parts=parts, history=history,
                                       head=head.cpu().state_dict(), config=asdict(cfg))
