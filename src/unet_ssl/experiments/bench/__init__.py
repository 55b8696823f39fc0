"""`unet-ssl bench`: where the time of each training and evaluation workload goes.

For SimCLR pretraining (64 px), masked-autoencoder pretraining (128 px), fine-tuning and
evaluation (128 px), in every precision / memory-format combination asked for, it measures
  - end to end: batches gathered from the in-memory uint8 tensors, views / masks / flips made
    batch-wise on the device, then the compute step;
  - compute only: the same step on batches made beforehand;
  - naive: per-sample PIL decoding + torchvision v2 transforms + a DataLoader (in this process,
    no workers) feeding the same step, the usual starting point;
  - FLOPs of a step (torch.utils.flop_counter) and the GFLOP/s achieved against a measured matmul
    peak of the same device and dtype.
Optional sections: `--numerics` (fp32 vs bf16 fine-tuning scores) and `--stages` (peak RSS and
time of pipeline stages run as subprocesses). Sections are written into one markdown file and
a later run replaces only the sections it measured.
"""
from __future__ import annotations

import io
import itertools
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import augment
from unet_ssl.core.finetuning import NUM_CLASSES, FinetuneConfig, finetune
from unet_ssl.core.losses import dice_loss
from unet_ssl.core.metrics import ConfusionMatrix
from unet_ssl.core.model import ProjectionHead, UNet, UNetConfig
from unet_ssl.core.pretraining import (
    PretrainConfig,
    SimCLRNet,
    mae_inputs,
    mae_loss,
    simclr_loss,
    simclr_views,
)
from unet_ssl.core.runtime import Runtime, make_runtime
from unet_ssl.core.stats import describe, paired_bootstrap, per_image_confusion
from unet_ssl.paths import PETS, PRETRAIN_IMAGES, REPO_SAMPLE

WORKLOADS = ("simclr", "mae", "finetune", "evaluate")


@dataclass(frozen=True)
class BenchConfig:
    workloads: tuple[str, ...] = WORKLOADS
    precisions: tuple[str, ...] = ("fp32", "bf16")
    channels_last: tuple[bool, ...] = (False, True)
    simclr_batch: int = 32  # images per SimCLR step (two views each), at 64 px
    batch: int = 8  # images per step at 128 px
    seconds: float = 1.0  # least timed seconds per measurement (after one warm-up step)
    min_steps: int = 2
    naive: bool = True
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # 0 = torch's default
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown bench workloads {sorted(unknown)}; choose from {WORKLOADS}")
        if set(self.precisions) - {"fp32", "bf16"}:
            raise ValueError(f"bench precisions must be fp32 and/or bf16, got {self.precisions}")


# ---------------------------------------------------------------------------------------------- data


@dataclass
class BenchData:
    """The real data the bench runs on: prepared tensors for the tensor path, and the raw files
    behind them for the naive per-sample path."""

    pretrain: torch.Tensor  # uint8 (N, 3, 64, 64)
    pets: torch.Tensor  # uint8 (M, 3, 128, 128)
    masks: torch.Tensor  # class maps (M, 128, 128)
    split: torch.Tensor  # split codes (M,)
    pretrain_jpegs: list[bytes]  # encoded photos from the tar shards (a bounded number)
    pet_files: list[tuple[Path, Path]]  # (image, trimap) pairs
    source: str


def _read_jpegs(pretrain_dir: Path, limit: int) -> list[bytes]:
    out = []
    for shard in sorted(pretrain_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                    out.append(tar.extractfile(member).read())
                    if len(out) >= limit:
                        return out
    return out


def load_data(root: Path, params: dict, naive_images: int = 512) -> BenchData:
    """The pipeline's prepared tensors when they exist under `root`, else the embedded sample
    decoded with the pipeline's own prepare code (real photos either way). The naive pipeline
    reads the raw files the tensors were made from (listed in the pets manifest)."""
    import pandas as pd

    from unet_ssl.data.preparation import prepare_pets, prepare_pretrain

    def read(pets_dir: Path, pretrain_file: Path, raw: Path, source: str) -> BenchData:
        pets = torch.load(pets_dir / "pets.pt", weights_only=True)
        photos = torch.load(pretrain_file, weights_only=True)["images"]
        manifest = pd.read_csv(pets_dir / "pets_manifest.csv")
        files = [(raw / image, raw / mask) for image, mask in zip(manifest["image_file"], manifest["mask_file"])]
        return BenchData(photos, pets["images"], pets["masks"], pets["split"], _read_jpegs(raw / "pretrain", naive_images),
                         files, f"{source} ({photos.shape[0]} photos, {pets['images'].shape[0]} pets)")

    if (root / PETS).is_file() and (root / PRETRAIN_IMAGES).is_file():
        return read(root / PETS.parent, root / PRETRAIN_IMAGES, root / params["data"]["raw_dir"],
                    f"prepared tensors in {root / PETS.parent.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        data_params = {**params["data"], "pretrain_limit": 0}
        prepare_pets(REPO_SAMPLE, Path(tmp) / "pets", data_params, data_params["split_seed"])
        prepare_pretrain(REPO_SAMPLE, Path(tmp) / "pretrain", data_params, data_params["split_seed"])
        return read(Path(tmp) / "pets", Path(tmp) / "pretrain" / "pretrain.pt", REPO_SAMPLE, "embedded sample decoded now")


# ------------------------------------------------------------------------------------ naive pipeline


def torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _naive_dataset(data: BenchData, workload: str, size: int, seed: int) -> torch.utils.data.Dataset:
    """Per-sample PIL decoding and torchvision v2 transforms, as a first DataLoader pipeline would do it."""
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    class Photos(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(data.pretrain_jpegs)

        def __getitem__(self, i):
            return self.transform(Image.open(io.BytesIO(data.pretrain_jpegs[i])).convert("RGB"))

    class Pets(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(data.pet_files)

        def __getitem__(self, i):
            image_path, trimap_path = data.pet_files[i]
            image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(image_path).convert("RGB")))
            trimap = tv_tensors.Mask(torch.as_tensor(v2.functional.pil_to_tensor(Image.open(trimap_path))[0].long() - 1))
            image, trimap = self.transform(image, trimap)
            return v2.functional.to_dtype(image, torch.float32, scale=True), trimap

    if workload == "simclr":
        view = v2.Compose([
            v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), to_float,
        ])
        return Photos(lambda img: (view(img), view(img)))
    if workload == "mae":
        resize = v2.Compose([v2.Resize((size, size), antialias=True), to_float])
        masks = torch.Generator().manual_seed(seed)
        return Photos(lambda img: (resize(img), augment.make_mask("patch", 1, size, size, masks)[0]))
    if workload == "finetune":
        return Pets(v2.Compose([v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip()]))
    return Pets(v2.Resize((size, size), antialias=True))


def _endless(loader) -> Iterator:
    while True:
        yield from loader


# ----------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """One measured loop: how to make inputs from batch indices (the tensor data path), the step
    on ready inputs, and how the naive pipeline's batches become the same inputs."""

    name: str
    label: str
    image_size: int
    batch_size: int
    n_images: int
    make_inputs: Callable[[torch.Tensor], tuple]
    step: Callable[[tuple], None]
    from_naive: Callable[[object], tuple]
    module: torch.nn.Module


def build_workload(name: str, data: BenchData, runtime: Runtime, cfg: BenchConfig, views: torch.Generator) -> Workload:
    """The same model, loss and optimiser as the pipeline's loop for `name`, on `runtime`."""
    reconstruct, segment = UNetConfig(out_channels=3), UNetConfig(out_channels=NUM_CLASSES)
    if name in ("simclr", "mae"):
        images = runtime.resident(data.pretrain)
    else:
        images, masks = runtime.resident(data.pets), runtime.resident(data.masks)

    def gather(idx: torch.Tensor) -> torch.Tensor:
        return runtime.to_device(images[idx.to(images.device)])

    if name == "simclr":
        pcfg = PretrainConfig(method="simclr", image_size=64)
        net = runtime.model(SimCLRNet(UNet(reconstruct).encoder, ProjectionHead(reconstruct.widths)))
        optimizer = torch.optim.Adam(net.parameters())

        def step(inputs):
            loss = simclr_loss(net, inputs[0], pcfg, runtime)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return Workload(name, "SimCLR pretraining", 64, cfg.simclr_batch, data.pretrain.shape[0],
                        lambda idx: (runtime.batch(simclr_views(gather(idx), pcfg, views)),), step,
                        lambda b: (runtime.batch(torch.cat(b)),), net)
    if name == "mae":
        pcfg = PretrainConfig(method="mae_patch", image_size=128)
        net = runtime.model(UNet(reconstruct))
        optimizer = torch.optim.Adam(net.parameters())

        def make(idx):
            x, mask = mae_inputs(gather(idx), pcfg, views)
            return runtime.batch(x), runtime.batch(mask)

        def step(inputs):
            loss = mae_loss(net, *inputs, pcfg, runtime)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return Workload(name, "MAE pretraining (patch mask)", 128, cfg.batch, data.pretrain.shape[0], make, step,
                        lambda b: (runtime.batch(b[0]), runtime.batch(b[1])), net)
    model = runtime.model(UNet(segment))
    if name == "finetune":
        optimizer = torch.optim.Adam(model.parameters())

        def make(idx):
            x, y = augment.paired_flip_crop(augment.to_float(gather(idx)), runtime.to_device(masks[idx.to(masks.device)]), views)
            return runtime.batch(x), y

        def step(inputs):
            with runtime.autocast():
                logits = model(inputs[0])
            loss = dice_loss(logits, inputs[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return Workload(name, "fine-tuning (Dice, flips)", 128, cfg.batch, data.pets.shape[0], make, step,
                        lambda b: (runtime.batch(b[0]), runtime.to_device(b[1])), model)
    model.eval()
    matrix = ConfusionMatrix(NUM_CLASSES)

    def step(inputs):
        with torch.inference_mode(), runtime.autocast():
            matrix.update(model(inputs[0]).argmax(1), inputs[1])

    return Workload(name, "evaluation (predict + confusion matrix)", 128, cfg.batch, data.pets.shape[0],
                    lambda idx: (runtime.batch(augment.to_float(gather(idx))), runtime.to_device(masks[idx.to(masks.device)])),
                    step, lambda b: (runtime.batch(b[0]), runtime.to_device(b[1])), model)


# ---------------------------------------------------------------------------------------- measuring


def rate(run: Callable[[int], None], runtime: Runtime, seconds: float, min_steps: int,
         warm_up: bool = True) -> tuple[float, int]:
    """Steps per second of `run(i)`, after one untimed call when `warm_up`: at least `min_steps`
    steps and `seconds` seconds, with the device synchronised before reading the clock."""
    if warm_up:
        run(0)
    runtime.synchronize()
    start, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - start < seconds:
        run(steps + 1)
        runtime.synchronize()
        steps += 1
    return steps / (time.perf_counter() - start), steps


def step_flops(workload: Workload, inputs: tuple) -> int:
    """FLOPs of one step (forward, and backward when training) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        workload.step(inputs)
    return counter.get_total_flops()


def matmul_peak(runtime: Runtime, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """GFLOP/s of a large square matmul in `dtype` on the device: the practical ceiling."""
    n = 8192 if runtime.device.type == "cuda" else 1024
    a = torch.randn(n, n, device=runtime.device).to(dtype)
    b = torch.randn(n, n, device=runtime.device).to(dtype)
    per_second, _ = rate(lambda i: torch.mm(a, b), runtime, seconds, 3)
    return 2 * n**3 * per_second / 1e9


@dataclass
class Row:
    workload: str
    label: str
    image_size: int
    batch_size: int
    precision: str
    channels_last: bool
    end_to_end: float  # images/s
    compute: float  # images/s
    naive: float | None  # images/s
    gflop_per_image: float
    peak_gflops: float
    compiled: float | None = None  # images/s, compute step under torch.compile
    compile_seconds: float | None = None

    @property
    def achieved_gflops(self) -> float:
        return self.compute * self.gflop_per_image


def measure(cfg: BenchConfig, data: BenchData, log: Callable[[str], None] = print) -> tuple[list[Row], dict]:
    """Every (workload, precision, channels_last) combination; returns the rows and the peaks."""
    runtime0 = make_runtime({"device": cfg.device, "precision": "fp32", "channels_last": False,
                             "num_threads": cfg.threads})
    peaks = {p: matmul_peak(runtime0, torch.float32 if p == "fp32" else torch.bfloat16) for p in cfg.precisions}
    log("matmul peak: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()))
    naive_available = cfg.naive and torchvision_available()
    rows = []
    for name in cfg.workloads:
        flops = None
        for precision, channels_last in itertools.product(cfg.precisions, cfg.channels_last):
            runtime = replace(runtime0, precision=precision, channels_last=channels_last)
            torch.manual_seed(cfg.seed)
            order = torch.Generator().manual_seed(cfg.seed)
            workload = build_workload(name, data, runtime, cfg, runtime.generator(cfg.seed))
            batch = min(workload.batch_size, workload.n_images)

            def indices() -> torch.Tensor:
                return torch.randint(workload.n_images, (batch,), generator=order)

            ready = [workload.make_inputs(indices()) for _ in range(2)]
            if flops is None:
                flops = step_flops(workload, ready[0])
            e2e, _ = rate(lambda i: workload.step(workload.make_inputs(indices())), runtime, cfg.seconds, cfg.min_steps)
            compute, _ = rate(lambda i: workload.step(ready[i % 2]), runtime, cfg.seconds, cfg.min_steps, warm_up=False)
            naive = None
            if naive_available:
                dataset = _naive_dataset(data, name, workload.image_size, cfg.seed)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
                    pin_memory=runtime.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
                stream = _endless(loader)
                naive_steps, _ = rate(lambda i: workload.step(workload.from_naive(next(stream))), runtime,
                                      cfg.seconds, cfg.min_steps, warm_up=False)
                naive = naive_steps * batch
            row = Row(name, workload.label, workload.image_size, batch, precision, channels_last, e2e * batch,
                      compute * batch, naive, flops / batch / 1e9, peaks[precision])
            if cfg.compile:
                row.compiled, row.compile_seconds = _compiled_rate(workload, ready, runtime, cfg)
            rows.append(row)
            log(f"{name:9s} {precision} channels_last={'on ' if channels_last else 'off'} "
                f"end-to-end {row.end_to_end:7.1f} img/s  compute {row.compute:7.1f} img/s  "
                f"naive {'n/a' if naive is None else f'{naive:7.1f}'} img/s  {row.achieved_gflops:6.1f} GFLOP/s")
    return rows, peaks


def _compiled_rate(workload: Workload, ready: list[tuple], runtime: Runtime, cfg: BenchConfig) -> tuple[float | None, float]:
    """Compute-step images/s with the module compiled in place (nn.Module.compile, so the step
    closures call the compiled module), and the time of the first, compiling step."""
    workload.module.compile()
    try:
        start = time.perf_counter()
        workload.step(ready[0])
        runtime.synchronize()
        compile_seconds = time.perf_counter() - start
        steps, _ = rate(lambda i: workload.step(ready[i % 2]), runtime, cfg.seconds, cfg.min_steps)
        return steps * min(workload.batch_size, workload.n_images), compile_seconds
    except Exception as e:  # compilation needs a working toolchain; report instead of failing the bench
        print(f"torch.compile failed for {workload.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return None, float("nan")


# ---------------------------------------------------------------------------------------- numerics


def finetune_settings(cfg: FinetuneConfig) -> str:
    return (f"{cfg.image_size} px, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.lr_schedule}), augmentation {cfg.augment}, "
            f"encoder {'frozen' if cfg.freeze_encoder else 'trained'}, skips {'on' if cfg.skip_connections else 'off'}, "
            f"subset {cfg.subset:g}")


def bf16_numerics(data: BenchData, params: dict, seeds: list[int], epochs: int, device: str = "auto",
                  log: Callable[[str], None] = print) -> list[dict]:
    """Fine-tunes from scratch in fp32 and in bf16 with the same seeds (pipeline settings otherwise) and
    scores the best-validation weights on the validation split (which decides) and the test split (shown
    only), keeping per-image confusion matrices for paired bootstrap intervals."""
    from unet_ssl.core.inference import predict
    from unet_ssl.core.runtime import seed_everything
    from unet_ssl.data.splits import split_indices, subset_indices
    cfg = FinetuneConfig(**{**params["finetune"], "epochs": epochs})
    rows = []
    for seed in seeds:
        train_idx = subset_indices(split_indices(data.split, "train"), cfg.subset, seed)
        val_idx, test_idx = split_indices(data.split, "val"), split_indices(data.split, "test")
        for precision in ("fp32", "bf16"):
            runtime = make_runtime({**params["runtime"], "device": device, "precision": precision})
            generator = seed_everything(seed)
            start = time.perf_counter()
            result = finetune(data.pets, data.masks, train_idx, val_idx, cfg, None, runtime, generator)
            seconds = time.perf_counter() - start
            model = UNet(UNetConfig.from_dict(result["arch"]))
            model.load_state_dict(result["model"])
            model = runtime.model(model)
            row = {"seed": seed, "precision": precision, "seconds": seconds,
                   "final_train_loss": result["history"][-1]["train_loss"], "selected_epoch": result["selected_epoch"],
                   "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx),
                   "channels_last": runtime.channels_last, "settings": finetune_settings(cfg)}
            for split, idx in (("val", val_idx), ("test", test_idx)):
                pred = predict(model, data.pets[idx], runtime, cfg.batch_size)
                cm = ConfusionMatrix(NUM_CLASSES)
                cm.update(pred, data.masks[idx])
                scores = cm.scores()
                row |= {f"{split}_jaccard": scores["jaccard"], f"{split}_f1": scores["f1"], f"{split}_pred": pred,
                        f"{split}_confusion": per_image_confusion(pred, data.masks[idx], NUM_CLASSES).numpy()}
            rows.append(row)
            log(f"numerics seed {seed} {precision}: val Jaccard {row['val_jaccard']:.4f} (test, shown only: "
                f"{row['test_jaccard']:.4f}), {seconds:.0f}s")
    return rows


def numerics_verdict(rows: list[dict]) -> dict:
    """bf16 against fp32, paired by seed: mean differences, and where per-image matrices were kept a
    bootstrap interval over seeds and images. The decision reads validation alone: bf16 is allowed as the
    default unless its validation interval lies below zero ('worse'); the test comparison is information."""
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
    out["speedup"] = statistics.fmean(by[s, "fp32"]["seconds"] / by[s, "bf16"]["seconds"] for s in seeds)
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


# ------------------------------------------------------------------------------------ stage memory


def stage_memory(stages: list[str], params_path: str, cwd: Path, timeout: float = 0, grace: float = 120,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Runs each pipeline stage as its own process (`python -m unet_ssl <stage>`) in `cwd` and
    reads its peak resident set size from the kernel (wait4's ru_maxrss, in KiB on Linux).

    With `timeout`, a stage still running after that many seconds is interrupted (SIGINT, so its
    MLflow run ends as KILLED; SIGKILL `grace` seconds later if a long tensor operation keeps it
    from noticing): training reaches its peak with the first step, so a long stage's peak is
    measured without running it to the end. Such a stage counts as stopped, not failed."""
    rows = []
    for stage in stages:
        start = time.perf_counter()
        # SIGINT back to its default, so Python raises KeyboardInterrupt even when this bench runs
        # in the background (where the shell starts jobs with SIGINT ignored).
        proc = subprocess.Popen([sys.executable, "-m", "unet_ssl", "--params", params_path, stage], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        timers = [threading.Timer(timeout, os.kill, [proc.pid, signal.SIGINT]),
                  threading.Timer(timeout + grace, os.kill, [proc.pid, signal.SIGKILL])] if timeout else []
        for timer in timers:
            timer.start()
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        for timer in timers:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        stopped = bool(timers) and proc.returncode != 0 and seconds >= timeout
        last = [line for line in output.splitlines() if line.startswith(stage.split("-")[0])]
        summary = (f"interrupted after {timeout:g} s, ended at {seconds:.0f} s" if stopped else
                   last[-1] if last else output.strip().splitlines()[-1] if output.strip() else "")
        rows.append({"stage": stage, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
                     "returncode": 0 if stopped else proc.returncode, "stopped": stopped, "summary": summary})
        log(f"stage {stage}: exit {proc.returncode}{' (stopped)' if stopped else ''}, {seconds:.0f}s, "
            f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
        if proc.returncode != 0 and not stopped:
            log(output[-3000:])
            break
    return rows


# -------------------------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def environment(device: torch.device, load_before: tuple[float, ...]) -> list[str]:
    try:
        import torchvision

        vision = torchvision.__version__
    except ImportError:
        vision = "not installed"
    try:
        git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, check=True,  # noqa: E731
                                           cwd=Path(__file__).parent).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD") + (" plus uncommitted changes" if git("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load_after = os.getloadavg()
    fmt = lambda la: " / ".join(f"{x:.2f}" for x in la)  # noqa: E731
    return [
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, torchvision {vision}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} torch threads, code at commit {commit}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- load average (1 / 5 / 15 min) before: {fmt(load_before)}, after: {fmt(load_after)} "
        "(other jobs on the machine slow every figure down alike)",
    ]


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def throughput_markdown(rows: list[Row], peaks: dict, cfg: BenchConfig, data: BenchData, env: list[str]) -> str:
    naive_note = ("naive: per-sample PIL decode + torchvision v2 transforms + DataLoader (batch as above, no worker "
                  "processes) feeding the same step" if any(r.naive is not None for r in rows) else
                  "naive column skipped: torchvision is not installed here (or --no-naive)")
    lines = [
        "## Throughput", "", "Generated by `unet-ssl bench`.", "", *env,
        f"- data: {data.source}",
        f"- batch: {cfg.simclr_batch} images (x2 views) for SimCLR at 64 px, {cfg.batch} images at 128 px; "
        f"at least {cfg.min_steps} steps and {cfg.seconds:g} s per figure after one warm-up step",
        "- matmul peak: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()),
        f"- end to end: batches indexed from the in-memory uint8 tensor, views / masks / flips made batch-wise, then "
        f"the step (forward, backward, Adam; evaluation: forward, argmax, confusion matrix); compute: the same step on "
        f"batches made beforehand; {naive_note}; GFLOP/s: FLOPs of the step (torch.utils.flop_counter) x compute "
        "images/s, against the matmul peak of the same dtype",
        "",
    ]
    header = ["workload", "px", "batch", "precision", "channels_last", "end to end img/s", "compute img/s",
              "end to end / compute", "naive img/s", "end to end / naive", "GFLOP/img", "GFLOP/s", "% of peak"]
    if cfg.compile:
        header += ["compiled compute img/s", "compile s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.label, r.image_size, r.batch_size, r.precision, "on" if r.channels_last else "off", _f(r.end_to_end),
                 _f(r.compute), _f(r.end_to_end / r.compute, 2), _f(r.naive),
                 _f(r.end_to_end / r.naive if r.naive else None, 1), _f(r.gflop_per_image, 2),
                 _f(r.achieved_gflops), _f(100 * r.achieved_gflops / r.peak_gflops)]
        if cfg.compile:
            cells += [_f(r.compiled), _f(r.compile_seconds, 0)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    best = {}
    for r in rows:
        base = next((b for b in rows if b.workload == r.workload and b.precision == "fp32" and not b.channels_last), None)
        if base and (r.workload not in best or r.end_to_end > best[r.workload][0].end_to_end):
            best[r.workload] = (r, base)
    if best:
        lines += ["", "Fastest end to end against fp32 with channels_last off:"]
        for r, base in best.values():
            lines.append(f"- {r.label}: {r.precision}, channels_last {'on' if r.channels_last else 'off'}: "
                         f"{r.end_to_end / base.end_to_end:.2f}x ({_f(base.end_to_end)} -> {_f(r.end_to_end)} img/s)")
    compiled = [r for r in rows if r.compiled]
    if compiled:
        lines += ["", "torch.compile, compiled against eager compute step of the same row (a workload's first row pays "
                      "the compile time; later rows reuse or recompile):"]
        for label in dict.fromkeys(r.label for r in compiled):
            lines.append(f"- {label}: " + ", ".join(
                f"{r.precision} channels_last {'on' if r.channels_last else 'off'} {r.compiled / r.compute:.2f}x"
                for r in compiled if r.label == label))
    over = [r for r in rows if r.achieved_gflops > r.peak_gflops]
    if over:
        lines += ["", f"{len(over)} rows run above the matmul peak of their dtype: the convolutions (oneDNN on CPU) "
                      "reach more FLOP/s than torch.mm does on square matrices of that dtype, so that peak is a "
                      "practical reference here, not the hardware's ceiling."]
    return "\n".join(lines) + "\n"


def numerics_markdown(rows: list[dict], verdict: dict, data: BenchData, epochs: int, env: list[str]) -> str:
    first = rows[0]
    lines = [
        "## bf16 numerics", "", "Generated by `unet-ssl bench --numerics`: fine-tuning from scratch with the pipeline's "
        f"`finetune` settings for {epochs} epochs, once in fp32 and once under bf16 autocast with the same seed "
        f"(channels_last {'on' if first['channels_last'] else 'off'}); scores of the best-validation weights "
        "(dataset-level, 3 classes); validation decides, test is shown only.", "", *env,
        f"- data: {data.source}; {first['n_train']} training, "
        f"{first['n_val']} validation, {first['n_test']} test images", f"- fine-tuning: {first['settings']}", "",
        "| seed | precision | final train loss | val Jaccard | val F1 | test Jaccard | test F1 | selected epoch | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['precision']} | {r['final_train_loss']:.4f} | {r['val_jaccard']:.4f} | "
                     f"{r['val_f1']:.4f} | {r['test_jaccard']:.4f} | {r['test_f1']:.4f} | {r['selected_epoch']} | "
                     f"{r['seconds']:.0f} |")
    lines.append("")
    for metric, role in (("val_jaccard", "decides"), ("test_jaccard", "information only, chooses nothing")):
        v = verdict[metric]
        interval = f"; paired bootstrap over seeds and images: {describe(v['paired'])}" if "paired" in v else ""
        lines.append(f"- {metric.replace('_', ' ')} ({role}): mean bf16 - fp32 difference {v['mean_diff']:+.4f} "
                     f"(largest {v['max_abs_diff']:.4f}); fp32 seed-to-seed std {_f(v['fp32_seed_std'], 4)}{interval}")
    if "pixel_agreement" in verdict:
        lines.append(f"- test pixels on which the fp32 and bf16 models predict the same class: "
                     f"{100 * verdict['pixel_agreement']:.1f}% (mean over seeds)"
                     + (f"; between fp32 runs of different seeds: {100 * verdict['seed_pixel_agreement']:.1f}%"
                        if "seed_pixel_agreement" in verdict else "")
                     + f"; classes predicted at all: {', '.join(CLASS_NAMES[c] for c in verdict['predicted_classes'])}")
    lines.append(f"- bf16 fine-tuning ran {verdict['speedup']:.2f}x as fast as fp32 (wall clock, same machine)")
    if len(verdict.get("predicted_classes", [0, 1])) < 2:
        outcome = "inconclusive: the models predict a single class, so the scores cannot tell fp32 from bf16"
    elif verdict["bf16_allowed"]:
        outcome = "bf16 is not worse than fp32 on validation (its interval does not lie below zero): it may be the default"
    else:
        outcome = "bf16 is worse than fp32 on validation (the interval lies below zero), so fp32 stays the default"
    lines.append(f"- verdict: {outcome} ({len({r['seed'] for r in rows})} seeds)")
    return "\n".join(lines) + "\n"


def memory_markdown(rows: list[dict], params_path: str, cwd: Path, env: list[str], label: str = "",
                    limit_mb: float = 4096) -> str:
    import yaml

    params = yaml.safe_load((cwd / params_path).read_text())
    lines = [
        f"## Peak memory per stage{f' ({label})' if label else ''}", "",
        "Generated by `unet-ssl bench --stages ...`: each stage run as its own process, peak resident set size "
        "from the kernel (wait4 ru_maxrss); a stage stopped early was interrupted after reaching its training "
        "steps (the peak comes with the first step).", "", *env, f"- repository: {cwd.resolve()}; data: {_raw_summary(cwd, params)}",
        f"- settings: pretrain {params['pretrain']['method']} batch {params['pretrain']['batch_size']} for "
        f"{params['pretrain']['epochs']} epochs at {params['pretrain']['image_size']} px; finetune batch "
        f"{params['finetune']['batch_size']} for {params['finetune']['epochs']} epochs; evaluate batch "
        f"{params['evaluate']['batch_size']}; pretrain_limit {params['data'].get('pretrain_limit', 0)} (0 = all); "
        f"precision {params['runtime']['precision']}",
        "", "| stage | exit | seconds | peak RSS MiB | under 4 GiB | output |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['returncode']} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{'yes' if r['peak_rss_mb'] < limit_mb else 'NO'} | {r['summary'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _raw_summary(cwd: Path, params: dict) -> str:
    """How much data the stages read: pets and pretraining photos in the prepared tensors, if any."""

    counts = []
    for name, path in (("pets", PETS), ("pretraining photos", PRETRAIN_IMAGES)):
        if (cwd / path).is_file():
            counts.append(f"{torch.load(cwd / path, weights_only=True, mmap=True)['images'].shape[0]} {name}")
    return ", ".join(counts) or f"raw data in {params['data']['raw_dir']}"


SECTION_ORDER = ("throughput", "numerics", "memory")


def write_section(path: Path, key: str, markdown: str) -> None:
    """Replaces the section `key` of the report (or adds it), keeping the other sections, in the
    order throughput, numerics, memory (sections of one kind in the order they were first written)."""
    text = path.read_text() if path.is_file() else (
        "# Performance\n\nFigures measured by `unet-ssl bench`; see docs/scale-out.md for running on many machines.\n")
    pattern = re.compile(r"<!-- bench:(?P<key>[\w-]+) -->\n.*?<!-- /bench:(?P=key) -->\n?", re.S)
    sections = {m["key"]: m[0].rstrip("\n") for m in pattern.finditer(text)}
    head = pattern.sub("", text).rstrip("\n")
    sections[key] = f"<!-- bench:{key} -->\n{markdown.rstrip(chr(10))}\n<!-- /bench:{key} -->"
    rank = lambda k: next((i for i, kind in enumerate(SECTION_ORDER) if k.startswith(kind)), len(SECTION_ORDER))  # noqa: E731
    ordered = sorted(sections, key=lambda k: (rank(k), list(sections).index(k)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n\n" + "\n\n".join(sections[k] for k in ordered) + "\n")


@dataclass
class BenchRequest:
    """What a `unet-ssl bench` invocation asked for."""

    config: BenchConfig = field(default_factory=BenchConfig)
    throughput: bool = True
    numerics_seeds: list[int] = field(default_factory=list)
    numerics_epochs: int = 0
    stages: list[str] = field(default_factory=list)
    stage_timeout: float = 0
    label: str = ""  # names the memory section, so runs with other settings keep their own
    out: Path | None = None


def run(request: BenchRequest, params: dict, params_path: str = "params.yaml", root: Path = Path(".")) -> None:
    load_before = os.getloadavg()
    cfg = request.config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = make_runtime({"device": cfg.device}).device
    if request.stages:
        rows = stage_memory(request.stages, params_path, root, request.stage_timeout)
        if request.out:
            key = "memory" + "".join(f"-{w}" for w in request.label.lower().split() if w.isalnum())
            write_section(request.out, key, memory_markdown(rows, params_path, root, environment(device, load_before),
                                                            request.label))
        if any(r["returncode"] for r in rows):
            raise RuntimeError("a stage failed; see its output above")
    if not (request.throughput or request.numerics_seeds):
        return
    data = load_data(root, params)
    print(f"bench data: {data.source}")
    if request.throughput:
        load_before = os.getloadavg()
        rows, peaks = measure(cfg, data)
        markdown = throughput_markdown(rows, peaks, cfg, data, environment(device, load_before))
        print("\n" + markdown)
        if request.out:
            write_section(request.out, "throughput", markdown)
    if request.numerics_seeds:
        load_before = os.getloadavg()
        rows = bf16_numerics(data, params, request.numerics_seeds, request.numerics_epochs, cfg.device)
        markdown = numerics_markdown(rows, numerics_verdict(rows), data, request.numerics_epochs,
                                     environment(device, load_before))
        print("\n" + markdown)
        if request.out:
            write_section(request.out, "numerics", markdown)
    if request.out:
        print(f"bench: wrote {request.out}")
