"""Timing and FLOP counting of the bench workloads: images/s end to end, of the compute step alone, and
through the naive pipeline, with the FLOPs of a step against a measured matmul peak."""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from unet_ssl.core.runtime import Runtime, make_runtime
from unet_ssl.experiments.bench.loading import BenchData
from unet_ssl.experiments.bench.naive import naive_batches, torchvision_available
from unet_ssl.experiments.bench.workloads import BenchConfig, Workload, build_workload


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
                stream = naive_batches(data, name, workload.image_size, batch, cfg.seed,
                                       pin=runtime.device.type == "cuda")
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


def _compiled_rate(workload: Workload, ready: list[tuple], runtime: Runtime,
                   cfg: BenchConfig) -> tuple[float | None, float]:
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
