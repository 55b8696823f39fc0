"""Device, precision and seeding choices shared by every training and evaluation loop."""
from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16"
    channels_last: bool

    def autocast(self):
        """bf16 autocast where asked for, otherwise a no-op context."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Moves a tensor to the device; from host memory to a GPU it is pinned first so the copy is non-blocking."""
        if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Moves a batch to the device, channels_last for images."""
        x = self.to_device(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def resident(self, data: torch.Tensor, max_fraction: float = 0.5) -> torch.Tensor:
        """Where an in-memory uint8 data set lives during training. On CUDA it is copied to the GPU
        once when it takes at most `max_fraction` of the free GPU memory, so batches are gathered and
        augmented there; otherwise it stays in host memory and `batch` pins each batch for a
        non-blocking copy. On CPU: unchanged."""
        if self.device.type != "cuda":
            return data
        free, _ = torch.cuda.mem_get_info(self.device)
        return data.to(self.device) if data.numel() * data.element_size() <= max_fraction * free else data

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the training device, so views and masks are drawn where they are used."""
        return torch.Generator(self.device).manual_seed(seed)

    def synchronize(self) -> None:
        """Waits for queued GPU work (for honest wall-clock timing); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a GPU that torch says supports it, or a CPU with AVX-512 BF16 or
    AMX (oneDNN's bf16 kernels). Elsewhere bf16 is emulated: on an AVX2-only AMD EPYC a 128-px fine-tuning step ran
    at 0.2 images/s in bf16 against 4.9 in fp32 (`unet-ssl bench`, 2026-12-06)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def make_runtime(params: dict, emulated_bf16: bool = False) -> Runtime:
    """From the `runtime` group of params.yaml: device 'auto' picks CUDA when present. bf16 asked for on a device
    without native bf16 runs in fp32, with a warning (the precision used is the Runtime's, which records report),
    unless `emulated_bf16` (the bf16 numerics experiment wants bf16's rounding however slow)."""
    name = params.get("device", "auto")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per torchrun process
    precision = params.get("precision", "fp32")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"runtime.precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and not emulated_bf16 and not native_bf16(device):
        warnings.warn(f"runtime.precision bf16: {device} has no native bf16 (CPU: AVX-512 BF16 or AMX), where it runs "
                      "tens of times slower than fp32; this run uses fp32", stacklevel=2)
        precision = "fp32"
    if params.get("num_threads"):
        torch.set_num_threads(int(params["num_threads"]))
    return Runtime(device, precision, bool(params.get("channels_last", True)))


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python and torch; returns a generator for the data-side randomness (views, masks, order)."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or inf, naming where it happened."""


def check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int, last_finite: float | None) -> float:
    """The loss as a float, or NonFiniteLossError naming where it broke. `epoch` counts from 1 and
    `step` is the 0-based batch index within it; the message gives both 1-based, as the progress bar."""
    value = loss.item()
    if not math.isfinite(value):
        before = (f"last finite loss: {last_finite:.6g}" if last_finite is not None
                  else "no finite loss before it in this run")
        raise NonFiniteLossError(
            f"{stage}: loss became {value} at epoch {epoch}, step {step + 1} ({before}); "
            "lower the learning rate or check the input data"
        )
    return value


class _Steps:
    """The steps without a bar: what `progress` gives where tqdm is not installed."""

    def __init__(self, steps: range):
        self.steps = steps

    def __iter__(self):
        return iter(self.steps)

    def set_postfix(self, **_: object) -> None:
        pass


def progress(steps: range, desc: str, show: bool = True):
    """A tqdm bar over `steps` on a terminal, or anywhere with UNET_SSL_PROGRESS=1: logs (DVC, CI, files)
    stay free of bar redraws, and the core still runs on torch alone where tqdm is absent."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Steps(steps)
    disable = not show or (None if os.environ.get("UNET_SSL_PROGRESS") != "1" else False)
    return tqdm(steps, desc=desc, unit="batch", leave=False, disable=disable)
