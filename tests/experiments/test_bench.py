"""`unet-ssl bench` on the embedded real sample, kept tiny: the data path, the measured rows, the
FLOP count against the U-Net's own arithmetic, the report sections and the stage-memory runner."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unet_ssl.cli import main
from unet_ssl.config import load_params
from unet_ssl.core import finetuning, inference, pretraining
from unet_ssl.core.finetuning import build_model, finetune_inputs, finetune_loss
from unet_ssl.core.model import UNetConfig
from unet_ssl.core.runtime import make_runtime
from unet_ssl.experiments.bench import workloads
from unet_ssl.experiments.bench.environment import environment
from unet_ssl.experiments.bench.loading import load_data
from unet_ssl.experiments.bench.memory import stage_memory
from unet_ssl.experiments.bench.numerics import bf16_numerics, numerics_verdict
from unet_ssl.experiments.bench.sections import numerics_markdown, throughput_markdown, write_bench_section
from unet_ssl.experiments.bench.timing import measure
from unet_ssl.experiments.bench.workloads import WORKLOADS, BenchConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = BenchConfig(precisions=("fp32",), channels_last=(False,), simclr_batch=4, batch=2, seconds=0, min_steps=1)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def sample_data(params, tmp_path_factory):
    """No prepared tensors under an empty root: the bench decodes the embedded sample itself."""
    return load_data(tmp_path_factory.mktemp("empty-root"), params, naive_images=16)


@pytest.fixture(scope="module")
def tiny_rows(sample_data):
    return measure(TINY, sample_data, log=lambda line: None)


def test_sample_data_are_the_prepared_tensors_and_their_raw_files(sample_data, params):
    size = params["data"]["image_size"]
    assert sample_data.source.startswith("embedded sample")
    assert sample_data.pretrain.dtype == torch.uint8 and sample_data.pretrain.shape[1:] == (3, 64, 64)
    assert sample_data.pets.dtype == torch.uint8 and sample_data.pets.shape[1:] == (3, size, size)
    assert sample_data.masks.shape == (sample_data.pets.shape[0], size, size)
    assert len(sample_data.pet_files) == sample_data.pets.shape[0] > 30
    assert all(image.is_file() and trimap.is_file() for image, trimap in sample_data.pet_files)
    assert len(sample_data.pretrain_jpegs) == 16 and all(j[:2] == b"\xff\xd8" for j in sample_data.pretrain_jpegs)


def test_every_workload_is_measured_on_all_three_paths(tiny_rows):
    rows, peaks = tiny_rows
    assert [r.workload for r in rows] == list(WORKLOADS)
    assert peaks["fp32"] > 1
    for r in rows:
        assert r.end_to_end > 0 and r.compute > 0 and r.naive > 0, r
        assert 0 < r.achieved_gflops < 5 * r.peak_gflops


def unet_forward_flops(size: int, cfg: UNetConfig) -> int:
    """Multiply-adds x 2 of every convolution of the U-Net, from its architecture alone."""
    flops, chans, side = 0, cfg.in_channels, size
    conv = lambda c_in, c_out, k, s: 2 * c_in * c_out * k * k * s * s  # noqa: E731
    for level, width in enumerate(cfg.widths):
        side = size >> level
        flops += conv(chans, width, 3, side) + conv(width, width, 3, side)
        chans = width
    for width in cfg.widths[-2::-1]:
        side *= 2
        flops += conv(chans, width, 2, side // 2) * 1  # transposed 2x2 stride 2: one 2x2 kernel per input pixel
        flops += conv(2 * width if cfg.skip_connections else width, width, 3, side) + conv(width, width, 3, side)
        chans = width
    return flops + conv(chans, cfg.out_channels, 1, size)


def test_flop_counts_match_the_unet_arithmetic(tiny_rows):
    rows, _ = tiny_rows
    by = {r.workload: r for r in rows}
    forward = unet_forward_flops(128, UNetConfig(out_channels=3)) / 1e9
    assert by["evaluate"].gflop_per_image == pytest.approx(forward, rel=1e-6)
    # Training: backward costs about two forwards (no input gradient for the first layer).
    assert 2.5 * forward < by["finetune"].gflop_per_image < 3 * forward
    assert 2.5 * forward < by["mae"].gflop_per_image < 3 * forward


def test_report_sections_are_replaced_in_place(tmp_path, tiny_rows, sample_data):
    rows, peaks = tiny_rows
    out = tmp_path / "performance.md"
    env = environment(torch.device("cpu"), (0.0, 0.0, 0.0))
    write_bench_section(out, "throughput", throughput_markdown(rows, peaks, TINY, sample_data, env))
    write_bench_section(out, "memory", "## Peak memory per stage\n\nfirst\n")
    write_bench_section(out, "memory", "## Peak memory per stage\n\nsecond\n")
    text = out.read_text()
    assert text.count("## Throughput") == 1 and text.count("## Peak memory") == 1
    assert "second" in text and "first" not in text
    assert text.index("## Throughput") < text.index("## Peak memory")
    table = [line for line in text.splitlines() if line.startswith("| SimCLR")]
    assert len(table) == 1 and "| 64 | 4 | fp32 | off |" in table[0]


def test_compiled_rates_get_their_own_columns_and_a_ratio_per_row(tiny_rows, sample_data):
    rows, peaks = tiny_rows
    compiled = [dataclasses.replace(r, compiled=2 * r.compute, compile_seconds=1.0) for r in rows]
    cfg = dataclasses.replace(TINY, compile=True)
    text = throughput_markdown(compiled, peaks, cfg, sample_data, env=[])
    assert "| compiled compute img/s | compile s |" in text
    assert "- SimCLR pretraining: fp32 channels_last off 2.00x" in text
    assert "torch.compile" not in throughput_markdown(rows, peaks, TINY, sample_data, env=[])


def test_numerics_verdict_reads_validation_alone_with_a_paired_interval():
    """bf16 is allowed unless its validation interval lies below zero; the test split changes nothing."""
    def matrices(correct: int) -> np.ndarray:  # 6 images, each 10 pixels of class 0: `correct` of them right
        return np.array([[[correct, 10 - correct, 0], [0, 0, 0], [0, 0, 0]]] * 6)

    def row(seed, precision, val_correct, test_correct, seconds):
        val, test = matrices(val_correct), matrices(test_correct)
        return {"seed": seed, "precision": precision, "seconds": seconds, "val_confusion": val, "test_confusion": test,
                "val_jaccard": val_correct / 10, "test_jaccard": test_correct / 10}

    same = [row(s, p, 7, 7, 10 if p == "fp32" else 5) for s in range(3) for p in ("fp32", "bf16")]
    verdict = numerics_verdict(same)
    assert verdict["bf16_allowed"] and verdict["speedup"] == pytest.approx(2.0)
    assert verdict["val_jaccard"]["paired"].verdict == "within noise"
    worse_on_val = [row(s, p, 7 if p == "fp32" else 4, 7, 10) for s in range(3) for p in ("fp32", "bf16")]
    assert not numerics_verdict(worse_on_val)["bf16_allowed"]
    worse_on_test_only = [row(s, p, 7, 7 if p == "fp32" else 4, 10) for s in range(3) for p in ("fp32", "bf16")]
    verdict = numerics_verdict(worse_on_test_only)
    assert verdict["bf16_allowed"] and verdict["test_jaccard"]["paired"].verdict == "worse"
    # One seed slowed down by other jobs (fp32/bf16 ratios 2, 2, 2, 0.2, 8.5) does not move the median.
    ratios = [2, 2, 2, 0.2, 8.5]
    contended = [row(s, p, 7, 7, 10 * ratios[s] if p == "fp32" else 10) for s in range(5) for p in ("fp32", "bf16")]
    verdict = numerics_verdict(contended)
    assert verdict["speedup"] == pytest.approx(2.0) and verdict["speedup_seeds"] == 5


@pytest.mark.slow  # 21 s on a 2-core AVX2 box: two pipeline stages, each in a child process, to read their peak RSS
def test_stage_memory_reads_each_stage_peak_rss(tmp_path, sample_data, params):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "sample", tmp_path / "data" / "raw")
    rows = stage_memory(["prepare-pets", "finetune"], "params.yaml", tmp_path, log=lambda line: None)
    assert rows[0]["returncode"] == 0 and all(50 < r["peak_rss_mb"] < 4096 for r in rows)
    assert (tmp_path / "data" / "prepared" / "pets" / "pets.pt").is_file()
    assert rows[1]["returncode"] != 0 and len(rows) == 2  # no pretrained checkpoint: it fails, and is reported
    # A stage still running at the timeout is interrupted and still reports its peak.
    long_run = {**params, "pretrain": {**params["pretrain"], "epochs": 100_000}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long_run))
    photos = tmp_path / "data" / "prepared" / "pretrain" / "pretrain.pt"
    photos.parent.mkdir(parents=True)
    torch.save({"images": sample_data.pretrain[:64].clone()}, photos)
    (stopped,) = stage_memory(["pretrain"], "long.yaml", tmp_path, timeout=8, log=lambda line: None)
    assert stopped["stopped"] and stopped["returncode"] == 0 and stopped["summary"].startswith("interrupted after 8 s")
    assert stopped["peak_rss_mb"] > 50
    assert not (tmp_path / "checkpoints" / "pretrained.pt").exists()


def test_cli_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    main(["bench", "--workloads", "evaluate", "--precisions", "bf16", "--channels-last", "on", "--batch", "2",
          "--seconds", "0", "--min-steps", "1", "--no-naive", "--out", "reports/performance.md"])
    text = (tmp_path / "reports" / "performance.md").read_text()
    assert "| evaluation (predict + confusion matrix) | 128 | 2 | bf16 | on |" in text
    assert "naive column skipped" in text and "torch " + torch.__version__ in text


@pytest.mark.slow
def test_bf16_numerics_on_the_sample(sample_data, params):
    rows = bf16_numerics(sample_data, params, seeds=[0], epochs=1, device="cpu", log=lambda line: None)
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(0 <= r["test_jaccard"] <= 1 and r["n_test"] > 0 for r in rows)


@pytest.mark.slow
def test_bf16_numerics_of_pretraining_fine_tunes_each_checkpoint_alike(sample_data, params):
    """Only the pretraining's precision differs: each checkpoint is fine-tuned in the params' precision."""
    few = dataclasses.replace(sample_data, pretrain=sample_data.pretrain[:64])
    short = {**params, "pretrain": {**params["pretrain"], "epochs": 1, "batch_size": 32}}
    rows = bf16_numerics(few, short, seeds=[0], epochs=1, device="cpu", log=lambda line: None, stage="pretrain")
    assert [(r["precision"], r["finetune_precision"]) for r in rows] == [("fp32", "fp32"), ("bf16", "fp32")]
    assert rows[0]["final_pretrain_loss"] != rows[1]["final_pretrain_loss"]
    assert "simclr on 64 photos, 1 epochs at 64 px" in rows[0]["pretrain_settings"]
    text = numerics_markdown(rows, numerics_verdict(rows), few, 1, env=[])
    assert text.startswith("## bf16 numerics: pretraining") and "| final pretrain loss |" in text
    assert "- bf16 pretraining ran" in text


def test_the_pretraining_numerics_section_keeps_the_fine_tuning_one(tmp_path, sample_data):
    """`--numerics-stage pretrain` writes its own section after the fine-tuning verdict, which it keeps."""
    def rows(stage):
        confusion = np.array([[[7, 3, 0], [0, 0, 0], [0, 0, 0]]] * 4)
        extra = {"final_pretrain_loss": 4.2, "pretrain_settings": "simclr", "finetune_precision": "fp32"}
        return [{"seed": s, "precision": p, "stage": stage, "seconds": 10.0 if p == "fp32" else 5.0,
                 "final_train_loss": 0.3, "selected_epoch": 1, "n_train": 30, "n_val": 4, "n_test": 4,
                 "channels_last": True, "settings": "64 px", "val_jaccard": 0.7, "val_f1": 0.8, "test_jaccard": 0.7,
                 "test_f1": 0.8, "val_confusion": confusion, "test_confusion": confusion,
                 **(extra if stage == "pretrain" else {})} for s in range(2) for p in ("fp32", "bf16")]

    out = tmp_path / "performance.md"
    for stage, key in (("finetune", "numerics"), ("pretrain", "numerics-pretrain")):
        write_bench_section(out, key, numerics_markdown(rows(stage), numerics_verdict(rows(stage)), sample_data, 1, []))
    text = out.read_text()
    assert text.index("## bf16 numerics\n") < text.index("## bf16 numerics: pretraining")
    assert "- bf16 fine-tuning ran 2.00x" in text and "- bf16 pretraining ran 2.00x" in text
    assert "| seed | precision | final pretrain loss | final train loss |" in text


@pytest.mark.parametrize("name, core, functions", [
    ("simclr", pretraining, ["pretrain_inputs", "pretrain_loss"]),
    ("mae", pretraining, ["pretrain_inputs", "pretrain_loss"]),
    ("finetune", finetuning, ["finetune_inputs", "finetune_loss"]),
    ("evaluate", inference, ["predict"]),
])
def test_workloads_run_the_cores_own_steps(sample_data, monkeypatch, name, core, functions):
    """Each workload makes its inputs and loss (evaluation: its predictions) with the very functions the
    training loops and the evaluate stage call, not with copies of them."""
    calls = []

    def spy(function_name, original):
        def record(*args, **kwargs):
            calls.append(function_name)
            return original(*args, **kwargs)
        return record

    for function_name in functions:
        original = getattr(core, function_name)
        assert getattr(workloads, function_name) is original
        monkeypatch.setattr(workloads, function_name, spy(function_name, original))
    runtime = make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False})
    workload = workloads.build_workload(name, sample_data, runtime, TINY, runtime.generator(0))
    workload.step(workload.make_inputs(torch.arange(2)))
    assert calls == functions


def test_the_finetuning_workload_step_is_the_core_step(sample_data):
    """Same weights, same batch, same seed: the workload's inputs and its first update are the core's."""
    runtime = make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False})
    torch.manual_seed(0)
    workload = workloads.build_workload("finetune", sample_data, runtime, TINY, runtime.generator(3))
    torch.manual_seed(0)
    model = build_model(workloads.FINETUNE, None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), workload.module.state_dict().values()))
    idx = torch.tensor([4, 1])
    inputs = workload.make_inputs(idx)
    x, y = finetune_inputs(sample_data.pets[idx], sample_data.masks[idx], workloads.FINETUNE, runtime,
                           runtime.generator(3))
    assert torch.equal(inputs[0], x) and torch.equal(inputs[1], y)
    loss = finetune_loss(model, x, y, runtime)
    optimizer = torch.optim.Adam(model.parameters(), lr=workloads.FINETUNE.lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    workload.step(inputs)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), workload.module.state_dict().values()))
