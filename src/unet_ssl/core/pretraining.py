"""Self-supervised pretraining of the U-Net: SimCLR on the encoder, or on the whole network a masked
autoencoder or SimCLR plus dense (per-pixel) contrast. One loop, resumable from the last complete epoch.
Depends on torch alone."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from unet_ssl.config import PretrainConfig, pretrains_decoder
from unet_ssl.core import augment, checkpoint, distributed
from unet_ssl.core.losses import nt_xent_loss, reconstruction_loss
from unet_ssl.core.model import ProjectionHead, UNet, UNetConfig
from unet_ssl.core.runtime import Runtime, check_finite, progress

log = logging.getLogger(__name__)

DENSE_POINTS = 16  # places per image whose two views dense pretraining pulls together


class SimCLRNet(torch.nn.Module):
    """Encoder + projection head as one module: exactly the parameters SimCLR trains, which is what
    DistributedDataParallel must see (the decoder gets no gradient in SimCLR)."""

    def __init__(self, encoder: torch.nn.Module, head: ProjectionHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class DenseContrastNet(torch.nn.Module):
    """The U-Net without its output layer, with SimCLR's head on the bottleneck and a projection of the decoder's
    last features at given places: what dense contrastive pretraining trains (DenseCL's global and dense losses,
    Wang et al. 2021; a pixel's positive is the same spot in the other view, as in VADeR, Pinheiro et al. 2020)."""

    def __init__(self, model: UNet, head: ProjectionHead):
        super().__init__()
        self.encoder, self.decoder, self.head = model.encoder, model.decoder, head

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings (N, D) and the embeddings of the places `coords` (N, K, 2) of each image, (N * K, D)."""
        features = self.encoder(x)
        pixels = self.decoder(features)
        sampled = F.grid_sample(pixels, coords[:, :, None].to(pixels.dtype), mode="bilinear", align_corners=False)
        return self.head(features), self.head.pixel_mlp(sampled.squeeze(-1).transpose(1, 2).flatten(0, 1))


def simclr_views(batch: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Two random views of every image of a uint8 batch, stacked as (view a of all, view b of all),
    made where the batch lives (the generator must be on the same device)."""
    return torch.cat([augment.simclr_view(batch, cfg.image_size, generator) for _ in range(2)])


def paired_nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent on embeddings stacked as (view a of all, view b of all), in fp32; under torchrun each half is
    gathered from every rank (with gradients), so each anchor has the negatives of the whole global batch."""
    z_a, z_b = z.float().chunk(2)
    return nt_xent_loss(distributed.gather(z_a), distributed.gather(z_b), temperature)


def simclr_loss(net: torch.nn.Module, views: torch.Tensor, cfg: PretrainConfig, runtime: Runtime) -> torch.Tensor:
    """NT-Xent on the projections of `views` (`paired_nt_xent`)."""
    with runtime.autocast():
        z = net(views)
    return paired_nt_xent(z, cfg.temperature)


def dense_loss(net: torch.nn.Module, views: torch.Tensor, coords: torch.Tensor, cfg: PretrainConfig,
               runtime: Runtime) -> torch.Tensor:
    """The mean of NT-Xent on the images' projections and NT-Xent on the places' projections (every other
    place of the batch a negative)."""
    with runtime.autocast():
        z, pixels = net(views, coords)
    return (paired_nt_xent(z, cfg.temperature) + paired_nt_xent(pixels, cfg.temperature)) / 2


def mae_inputs(batch: torch.Tensor, cfg: PretrainConfig,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images at `cfg.image_size` (upsampled bilinearly when stored smaller) and their masks
    (1 where hidden), made where the batch lives."""
    images = augment.to_float(batch)
    if images.shape[-1] != cfg.image_size:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    mask = augment.make_mask(cfg.method.removeprefix("mae_"), images.shape[0], cfg.image_size, cfg.image_size,
                             generator, cfg.mask_patch, cfg.mask_ratio, device=images.device)
    return images, mask


def mae_loss(net: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, cfg: PretrainConfig,
             runtime: Runtime) -> torch.Tensor:
    """Blackens the masked pixels and reconstructs the whole image (loss over all pixels, or masked only)."""
    with runtime.autocast():
        reconstruction = net(images * (1 - mask))
    return reconstruction_loss(reconstruction, images, mask, cfg.masked_only_loss)


def pretraining_networks(cfg: PretrainConfig, skip_connections: bool,
                         runtime: Runtime) -> tuple[UNet, ProjectionHead]:
    """The U-Net and the projection head on the device, both built whatever the method, so a seed
    gives every method the same initial weights."""
    arch = UNetConfig(out_channels=3, skip_connections=skip_connections)
    model = runtime.model(UNet(arch))
    head = ProjectionHead(arch.widths, multi_level=cfg.projection == "multi_level", pixels=cfg.method == "dense")
    return model, runtime.model(head)


def trained_network(model: UNet, head: ProjectionHead, cfg: PretrainConfig) -> torch.nn.Module:
    """What a step trains: the whole U-Net for a masked autoencoder, encoder + head for SimCLR, all but the
    U-Net's output layer + both heads for dense pretraining."""
    if cfg.method == "dense":
        return DenseContrastNet(model, head)
    return model if cfg.method.startswith("mae_") else SimCLRNet(model.encoder, head)


def pretrain_inputs(batch: torch.Tensor, cfg: PretrainConfig, runtime: Runtime,
                    generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One step's inputs from a uint8 batch: two views of every image (SimCLR; dense pretraining adds the
    places both views show), or the images and their masks (masked autoencoder), drawn where the batch lives,
    then in the runtime's memory format."""
    if cfg.method.startswith("mae_"):
        images, mask = mae_inputs(batch, cfg, generator)
        return runtime.batch(images), runtime.batch(mask)
    if cfg.method == "dense":
        views, coords = augment.dense_views(batch, cfg.image_size, generator, DENSE_POINTS)
        return runtime.batch(views), coords
    return (runtime.batch(simclr_views(batch, cfg, generator)),)


def pretrain_loss(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], cfg: PretrainConfig,
                  runtime: Runtime) -> torch.Tensor:
    """The loss `pretrain` back-propagates for one step on `pretrain_inputs`."""
    if cfg.method.startswith("mae_"):
        return mae_loss(net, *inputs, cfg, runtime)
    if cfg.method == "dense":
        return dense_loss(net, *inputs, cfg, runtime)
    return simclr_loss(net, *inputs, cfg, runtime)


def pretrain(
    images: torch.Tensor | None,
    cfg: PretrainConfig,
    skip_connections: bool,
    runtime: Runtime,
    generator: torch.Generator,
    resume_path: Path | None = None,
    resume_key: dict | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    clock: checkpoint.RunClock | None = None,
) -> dict:
    """Trains for `cfg.epochs` and returns a checkpoint dict (format of `checkpoint.model_checkpoint`).

    `images` is uint8 (N, 3, H, W) in memory (None for method 'none'). With `resume_path`, the state is saved
    there after every epoch and a run with the same config picks up after the last complete epoch; `clock`
    (started by the caller) then counts the time of the processes it went on from.

    Under torchrun (process group initialised, see `distributed.init_from_env`) the model is wrapped in
    DistributedDataParallel, `cfg.batch_size` is the global batch split evenly over the processes, and only
    rank 0 calls `on_epoch` and writes `resume_path` (every rank reads it, so it must be on a shared disk).
    """
    ctx = distributed.context()
    model, head = pretraining_networks(cfg, skip_connections, runtime)
    if cfg.method == "none":
        return checkpoint.model_checkpoint(model, method="none", pretrained_parts=[], history=[])
    trained = trained_network(model, head, cfg)
    net = distributed.wrap(trained, runtime.device)
    optimizer = torch.optim.Adam(trained.parameters(), lr=cfg.lr)
    run_key = {**asdict(cfg), "skip_connections": skip_connections, "n_images": images.shape[0],
               "world_size": ctx.world_size, **(resume_key or {})}
    modules = {"model": model, "head": head}
    state = checkpoint.resume_training_state(resume_path, run_key, modules, optimizer, generator, "pretraining")
    start_epoch, history = (state["epoch"], state["history"]) if state else (0, [])
    clock = clock or checkpoint.RunClock()
    if state:
        clock.resume(state)
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"pretraining needs at least 2 images, got {n}")
    batch_size = min(cfg.batch_size, n)  # the global batch, split over the processes under torchrun
    if ctx.active:
        batch_size -= batch_size % ctx.world_size
        if batch_size == 0:
            raise ValueError(f"{n} images cannot fill a batch on each of {ctx.world_size} processes")
    steps = n // batch_size  # drop the ragged last batch: NT-Xent wants full batches
    images = runtime.resident(images)
    last_loss = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        net.train()
        # Same order on every rank (shared seed); views and masks from a per-rank stream on the device.
        order = torch.randperm(n, generator=generator)
        views_generator = runtime.generator(int(torch.randint(2**62, (1,), generator=generator)) + ctx.rank)
        total = 0.0
        bar = progress(range(steps), f"pretrain {cfg.method} epoch {epoch}/{cfg.epochs}", show=ctx.is_main)
        for step in bar:
            local = distributed.shard(order[step * batch_size:(step + 1) * batch_size], ctx)
            batch = runtime.to_device(images[local.to(images.device)])
            loss = pretrain_loss(net, pretrain_inputs(batch, cfg, runtime, views_generator), cfg, runtime)
            last_loss = check_finite(loss, f"pretrain {cfg.method}", epoch, step, last_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += last_loss
            bar.set_postfix(loss=f"{last_loss:.4f}")
        row = {"epoch": epoch, "loss": distributed.mean_over_ranks(total / steps)}
        history.append(row)
        if on_epoch and ctx.is_main:
            on_epoch(epoch, row)
        if resume_path is not None and ctx.is_main:
            checkpoint.save_training_state(resume_path, run_key, epoch, modules, optimizer, generator, history=history,
                                           clock=clock.spent())
    parts = ["encoder", "decoder"] if pretrains_decoder(cfg.method) else ["encoder"]
    return checkpoint.model_checkpoint(model.cpu(), method=cfg.method, pretrained_parts=parts, history=history,
                                       head=head.cpu().state_dict(), config=asdict(cfg))
