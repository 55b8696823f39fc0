"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, carrying the
architecture they were made with and a format version."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unet_ssl.core.model import UNet, UNetConfig

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
        raise CheckpointError(
            f"checkpoint {path} cannot be read with torch.load(weights_only=True): {reason}") from None
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this unet-ssl reads version "
                              f"{FORMAT_VERSION} (re-run the stage that writes it)")
    return ckpt


def save_training_state(path: Path, run_key: dict, epoch: int, modules: dict[str, Stateful],
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, **extra) -> None:
    """Everything needed to go on after `epoch` as if never stopped: weights, optimizer, both RNG streams."""
    save_atomic({"format_version": FORMAT_VERSION, "run_key": run_key, "epoch": epoch,
                 **{name: module.state_dict() for name, module in modules.items()},
                 "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "generator": generator.get_state(), **extra}, path)


@dataclass
class RunClock:
    """Wall and CPU seconds a training run has spent, its earlier processes included. A run resumed from a
    training state is the same run, so its time is that of every process up to the state it goes on from.
    Start one before the run's work; the training loops save `spent()` in each state and `resume` from it."""
    earlier_seconds: float = 0.0
    earlier_cpu_seconds: float = 0.0
    resumed_after_epoch: int = 0  # 0: not resumed
    _start: float = field(default_factory=time.perf_counter, repr=False)
    _cpu_start: float = field(default_factory=time.process_time, repr=False)

    def spent(self) -> dict[str, float]:
        return {"seconds": self.earlier_seconds + time.perf_counter() - self._start,
                "cpu_seconds": self.earlier_cpu_seconds + time.process_time() - self._cpu_start}

    def resume(self, state: dict) -> None:
        """Counts the seconds the state's processes had spent when they saved it."""
        saved = state.get("clock", {})
        self.earlier_seconds = saved.get("seconds", 0.0)
        self.earlier_cpu_seconds = saved.get("cpu_seconds", 0.0)
        self.resumed_after_epoch = state["epoch"]


READ_CHUNK = 1 << 20  # bytes read at a time when hashing a file


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes: the identity of an input (data, checkpoint) in a resume key."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """sha256 over this package's source files: a resume state is only continued by the code that began it
    (works without git and in DVC's temporary experiment copies)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # all of unet_ssl, not only core/
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def dotted(params: dict, name: str) -> object:
    """params["a"]["b"] for "a.b"."""
    node = params
    for part in name.split("."):
        node = node[part]
    return node


def resume_key(params: dict, read: list[str], inputs: dict[str, Path]) -> dict:
    """What makes a resume state this run's own: every param the stage reads (dotted names, as its
    dvc.yaml entry lists them; the seed included), the content hash of each input file, the code version."""
    return {"params": {name: dotted(params, name) for name in read},
            "inputs": {name: file_digest(path) for name, path in inputs.items()},
            "code": code_version()}


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, item in value.items()
            for k, v in _flat(item, f"{prefix}{key}." if isinstance(item, dict) else f"{prefix}{key}").items()}


def key_differences(saved: dict | None, wanted: dict) -> list[str]:
    """'name: old -> new' for every entry of two resume keys that differs (long hashes shortened)."""
    show = lambda v: f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else repr(v)  # noqa: E731
    old, new = _flat(saved or {}), _flat(wanted)
    return [f"{k}: {show(old.get(k, '<none>'))} -> {show(new.get(k, '<none>'))}"
            for k in sorted(old.keys() | new.keys()) if old.get(k, "<none>") != new.get(k, "<none>")]


def resume_training_state(path: Path | None, run_key: dict, modules: dict[str, Stateful],
                          optimizer: torch.optim.Optimizer, generator: torch.Generator, what: str) -> dict | None:
    """Restores the state `save_training_state` wrote, if `path` holds one made with an identical `run_key`
    (every setting that determines the result: params, seed, input hashes, code version); returns it
    (epoch, history, ...) or None to start fresh. A state of another run is reported in one line and deleted,
    so it is never used again."""
    if path is None or not Path(path).is_file():
        return None
    state = load(path)
    differences = key_differences(state.get("run_key"), run_key)
    if differences:
        log.warning("%s: not resuming %s, it was written by another run (%s); starting fresh",
                    what, path, "; ".join(differences))
        Path(path).unlink()
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
        raise CheckpointError(
            f"checkpoint {path} carries no usable architecture config ({type(e).__name__}: {e})") from None


def check_arch(ckpt_arch: dict, wanted: UNetConfig, path: Path, ignore: tuple[str, ...] = ()) -> None:
    """Fails with a message naming every architecture field that differs."""
    have = arch_of({"arch": ckpt_arch}, path).to_dict()
    want = wanted.to_dict()
    diffs = [f"{k}: checkpoint has {have[k]}, requested {want[k]}"
             for k in want if k not in ignore and have[k] != want[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match the requested architecture: " + "; ".join(diffs))


def model_from(ckpt: dict, path: Path = Path("<checkpoint>")) -> UNet:
    """Rebuilds a full U-Net from a checkpoint dict written by `model_checkpoint` (loaded or just trained)."""
    model = UNet(arch_of(ckpt, path))
    model.load_state_dict(ckpt["model"])
    return model


def load_model(path: Path) -> UNet:
    """Rebuilds a full U-Net from a checkpoint file written by `model_checkpoint`."""
    return model_from(load(path), path)
