"""`unet-ssl bench`: what an invocation asked for, and the order in which it is measured and reported."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unet_ssl.core.runtime import make_runtime
from unet_ssl.experiments.bench.environment import environment
from unet_ssl.experiments.bench.loading import load_data
from unet_ssl.experiments.bench.memory import stage_memory
from unet_ssl.experiments.bench.numerics import bf16_numerics, numerics_verdict
from unet_ssl.experiments.bench.sections import (
    memory_markdown,
    numerics_markdown,
    throughput_markdown,
    write_bench_section,
)
from unet_ssl.experiments.bench.timing import measure
from unet_ssl.experiments.bench.workloads import BenchConfig


@dataclass
class BenchRequest:
    config: BenchConfig = field(default_factory=BenchConfig)
    throughput: bool = True
    numerics_seeds: list[int] = field(default_factory=list)
    numerics_epochs: int = 0
    numerics_stage: str = "finetune"  # or "pretrain": the precision of the pretraining
    stages: list[str] = field(default_factory=list)
    stage_timeout: float = 0
    label: str = ""  # names the memory section, so runs with other settings keep their own
    out: Path | None = None


def run(request: BenchRequest, params: dict, params_path: str = "params.yaml", root: Path = Path(".")) -> None:
    """Stage memory first (subprocesses, before this process holds any data), then throughput, then numerics;
    each section is printed and, with `request.out`, written into the report in place of its last version."""
    load_before = os.getloadavg()
    cfg = request.config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = make_runtime({"device": cfg.device}).device
    if request.stages:
        rows = stage_memory(request.stages, params_path, root, request.stage_timeout)
        if request.out:
            key = "memory" + "".join(f"-{w}" for w in request.label.lower().split() if w.isalnum())
            markdown = memory_markdown(rows, params_path, root, environment(device, load_before), request.label)
            write_bench_section(request.out, key, markdown)
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
            write_bench_section(request.out, "throughput", markdown)
    if request.numerics_seeds:
        load_before = os.getloadavg()
        rows = bf16_numerics(data, params, request.numerics_seeds, request.numerics_epochs, cfg.device,
                             stage=request.numerics_stage)
        markdown = numerics_markdown(rows, numerics_verdict(rows), data, request.numerics_epochs,
                                     environment(device, load_before))
        print("\n" + markdown)
        if request.out:
            key = "numerics" if request.numerics_stage == "finetune" else f"numerics-{request.numerics_stage}"
            write_bench_section(request.out, key, markdown)
    if request.out:
        print(f"bench: wrote {request.out}")
