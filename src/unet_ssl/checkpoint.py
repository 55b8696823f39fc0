"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, carrying the
architecture they were made with and a format version."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from unet_ssl.model import UNet, UNetConfig

FORMAT_VERSION = 1
log = logging.getLogger(__name__)
Stateful = torch.nn.Module | torch.optim.lr_scheduler.LRScheduler  # what a training state saves by name


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, of another format version, or made for another
    architecture than the one requested. The message names the file and what is wrong."""


def save_atomic(obj: dict, path: Path) -> None:
    """Writes to a temporary file in the same folder, then renames: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Loads with `weights_only=True` (tensors and plain containers only, never arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read with torch.load(weights_only=True): {reason}") from None
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this unet-ssl reads version {FORMAT_VERSION} "
                              "(re-run the stage that writes it)")
    return ckpt


def save_training_state(path: Path, run_key: dict, epoch: int, modules: dict[str, Stateful],
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, **extra) -> None:
    """Everything needed to go on after `epoch` as if never stopped: weights, optimizer, both RNG streams."""
    save_atomic({"format_version": FORMAT_VERSION, "run_key": run_key, "epoch": epoch,
                 **{name: module.state_dict() for name, module in modules.items()},
                 "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "generator": generator.get_state(), **extra}, path)


def resume_training_state(path: Path | None, run_key: dict, modules: dict[str, Stateful],
                          optimizer: torch.optim.Optimizer, generator: torch.Generator, what: str) -> dict | None:
    """Restores the state `save_training_state` wrote, if `path` holds one made with the same `run_key`
    (settings and data size); returns it (epoch, history, ...) or None to start from scratch."""
    if path is None or not Path(path).is_file():
        return None
    state = load(path)
    if state.get("run_key") != run_key:
        log.warning("ignoring %s: it was written with other settings", path)
        return None
    for name, module in modules.items():
        module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["generator"])
    log.info("resuming %s from %s after epoch %d", what, path, state["epoch"])
    return state


def model_checkpoint(model: UNet, **extra) -> dict:
    return {"format_version": FORMAT_VERSION, "arch": model.config.to_dict(), "model": model.state_dict(), **extra}


def arch_of(ckpt: dict, path: Path) -> UNetConfig:
    """The architecture a checkpoint was written with."""
    try:
        return UNetConfig.from_dict(ckpt["arch"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} carries no usable architecture config ({type(e).__name__}: {e})") from None


def check_arch(ckpt_arch: dict, wanted: UNetConfig, path: Path, ignore: tuple[str, ...] = ()) -> None:
    """Fails with a message naming every architecture field that differs."""
    have = arch_of({"arch": ckpt_arch}, path).to_dict()
    want = wanted.to_dict()
    diffs = [f"{k}: checkpoint has {have[k]}, requested {want[k]}" for k in want if k not in ignore and have[k] != want[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match the requested architecture: " + "; ".join(diffs))


def load_model(path: Path) -> UNet:
    """Rebuilds a full U-Net from a checkpoint written by `model_checkpoint`."""
    ckpt = load(path)
    model = UNet(arch_of(ckpt, path))
    model.load_state_dict(ckpt["model"])
    return model
