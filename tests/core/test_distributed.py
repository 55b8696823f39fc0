"""Two CPU processes (gloo) against one process on the same global batch: the SimCLR loss with
gathered negatives, and the gradients after DistributedDataParallel's averaging, must agree."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unet_ssl.core import distributed
from unet_ssl.core.model import ProjectionHead, UNet, UNetConfig
from unet_ssl.core.pretraining import (
    PretrainConfig,
    SimCLRNet,
    mae_inputs,
    mae_loss,
    pretrain,
    simclr_loss,
    simclr_views,
)
from unet_ssl.core.runtime import Runtime
from unet_ssl.data.images import decode_rgb

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TAR = ROOT / "sample" / "pretrain" / "animals-64px-sample.tar"
WORLD = 2
GLOBAL_BATCH = 8
CPU_FP32 = Runtime(torch.device("cpu"), "fp32", channels_last=False)
CFG = PretrainConfig(method="simclr", epochs=2, batch_size=GLOBAL_BATCH, image_size=32)


def sample_photos(n: int) -> torch.Tensor:
    """The first `n` real 64 px photos of the embedded pretraining sample, uint8 (n, 3, 64, 64)."""
    with tarfile.open(SAMPLE_TAR) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")][:n]
        return torch.stack([decode_rgb(m.name, tar.extractfile(m).read()).pixels for m in members])


def fresh_net(seed: int = 0) -> SimCLRNet:
    """In float64, so the comparison measures the algorithm (gather, gradient scaling), not the
    float32 rounding of different summation orders (about 1e-5 relative through batch norm)."""
    torch.manual_seed(seed)
    arch = UNetConfig(out_channels=3)
    return SimCLRNet(UNet(arch).encoder, ProjectionHead(arch.widths)).double()


def global_views(photos: torch.Tensor) -> torch.Tensor:
    return simclr_views(photos, CFG, torch.Generator().manual_seed(1)).double()


def local_views(views: torch.Tensor, ctx: distributed.Context) -> torch.Tensor:
    """This rank's images of the global batch, both views (view a of its images, then view b)."""
    view_a, view_b = views.chunk(2)
    mine = distributed.shard(torch.arange(view_a.shape[0]), ctx)
    return torch.cat([view_a[mine], view_b[mine]])


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def _worker(rank: int, init_file: str, photos: torch.Tensor, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = distributed.context()
        views = local_views(global_views(photos), ctx)
        results = {}
        for mode in ("eval", "train"):
            net = fresh_net()
            net.train(mode == "train")
            ddp = distributed.wrap(net, torch.device("cpu"))
            loss = simclr_loss(ddp, views, CFG, CPU_FP32)
            loss.backward()
            results[mode] = {"loss": loss.detach(), "grads": grads(net)}
        mae_cfg = replace(CFG, method="mae_patch", image_size=64)
        torch.manual_seed(0)
        mae_net = UNet(UNetConfig(out_channels=3)).double().eval()
        ddp = distributed.wrap(mae_net, torch.device("cpu"))
        images, mask = mae_inputs(photos[distributed.shard(torch.arange(GLOBAL_BATCH), ctx)], mae_cfg,
                                  torch.Generator().manual_seed(2 + rank))
        mae_loss(ddp, images.double(), mask.double(), mae_cfg, CPU_FP32).backward()
        results["mae_grads"] = grads(mae_net)
        # A whole pretraining run: rank 0 alone writes the resume file and calls on_epoch.
        resume = Path(out_dir) / "resume.pt"
        epochs_seen = []
        checkpoint = pretrain(photos, CFG, True, CPU_FP32, torch.Generator().manual_seed(0), resume_path=resume,
                              on_epoch=lambda epoch, row: epochs_seen.append(epoch))
        results["pretrain"] = {"model": checkpoint["model"], "history": checkpoint["history"],
                               "epochs_seen": epochs_seen, "resume_exists_after_training": resume.is_file()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    photos = sample_photos(GLOBAL_BATCH * 2)
    mp.spawn(_worker, args=(str(out / "init"), photos, str(out)), nprocs=WORLD, join=True)
    return photos, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def assert_grads_close(actual: dict, expected: dict) -> float:
    """Every gradient tensor close to the reference; returns the largest absolute difference."""
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    return max((actual[name] - expected[name]).abs().max().item() for name in expected)


def report(capsys, what: str, ranks: list[dict], key: str, loss: torch.Tensor, grad_diff: list[float]) -> None:
    with capsys.disabled():
        print(f"\n[2 gloo processes vs 1 process, {what}] loss {loss.item():.6f} vs ranks "
              f"{[round(r[key]['loss'].item(), 6) for r in ranks]}; {len(ranks[0][key]['grads'])} gradient tensors, "
              f"max |diff| {max(grad_diff):.2e}")


def test_shards_partition_the_global_batch_in_order():
    batch = torch.randperm(12)
    parts = [distributed.shard(batch, distributed.Context(rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    with pytest.raises(ValueError, match="divisible"):
        distributed.shard(torch.arange(7), distributed.Context(0, 2))


def test_outside_torchrun_everything_is_single_process():
    ctx = distributed.init_from_env() if "WORLD_SIZE" not in os.environ else distributed.context()
    x = torch.randn(3, 2)
    assert ctx == distributed.Context() and distributed.gather(x) is x
    net = fresh_net()
    assert distributed.wrap(net, torch.device("cpu")) is net


def test_two_processes_match_one_process_with_frozen_batch_statistics(two_process_results, capsys):
    """With batch norm on running statistics the two-process step is exactly the one-process step."""
    photos, ranks = two_process_results
    net = fresh_net().eval()
    loss = simclr_loss(net, global_views(photos[:GLOBAL_BATCH * 2]), CFG, CPU_FP32)
    loss.backward()
    for result in ranks:
        torch.testing.assert_close(result["eval"]["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    report(capsys, "batch norm on running statistics", ranks, "eval", loss,
           [assert_grads_close(result["eval"]["grads"], grads(net)) for result in ranks])


def test_two_processes_match_one_process_normalising_each_shard(two_process_results, capsys):
    """In training mode each CPU rank normalises with its own shard's batch statistics (torch has
    no CPU SyncBatchNorm), so the one-process reference embeds each shard separately and computes
    NT-Xent over the concatenated global batch."""
    photos, ranks = two_process_results
    net = fresh_net().train()
    views = global_views(photos[:GLOBAL_BATCH * 2])
    z = torch.cat([net(local_views(views, distributed.Context(rank, WORLD))) for rank in range(WORLD)])
    # Rank order holds (a of shard 0, b of shard 0, a of shard 1, b of shard 1); regroup as all a, then all b.
    per_rank = z.chunk(WORLD)
    z_a = torch.cat([part.chunk(2)[0] for part in per_rank])
    z_b = torch.cat([part.chunk(2)[1] for part in per_rank])
    from unet_ssl.core.losses import nt_xent_loss

    loss = nt_xent_loss(z_a, z_b, CFG.temperature)
    loss.backward()
    for result in ranks:
        torch.testing.assert_close(result["train"]["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    report(capsys, "batch norm per shard", ranks, "train", loss,
           [assert_grads_close(result["train"]["grads"], grads(net)) for result in ranks])


def test_mae_gradients_are_the_global_mean(two_process_results):
    """Averaging each rank's gradient of its mean pixel loss is the gradient of the global mean."""
    photos, ranks = two_process_results
    cfg = replace(CFG, method="mae_patch", image_size=64)
    torch.manual_seed(0)
    net = UNet(UNetConfig(out_channels=3)).double().eval()
    pieces = [mae_inputs(photos[distributed.shard(torch.arange(GLOBAL_BATCH), distributed.Context(rank, WORLD))], cfg,
                         torch.Generator().manual_seed(2 + rank)) for rank in range(WORLD)]
    images, mask = (torch.cat(parts) for parts in zip(*pieces))
    mae_loss(net, images.double(), mask.double(), cfg, CPU_FP32).backward()
    for result in ranks:
        assert_grads_close(result["mae_grads"], grads(net))


def test_distributed_pretraining_keeps_ranks_in_step_and_writes_on_rank_zero_only(two_process_results):
    _, ranks = two_process_results
    runs = [r["pretrain"] for r in ranks]
    assert [len(r["history"]) for r in runs] == [CFG.epochs, CFG.epochs]
    assert runs[0]["history"] == runs[1]["history"]  # the logged loss is averaged over ranks
    # Weights stay identical (gradients are all-reduced); batch-norm running statistics are each
    # rank's own on CPU and rank 0's are the ones saved.
    weights = [name for name in runs[0]["model"] if "running_" not in name]
    assert len(weights) > 30
    for name in weights:
        torch.testing.assert_close(runs[1]["model"][name], runs[0]["model"][name], rtol=0, atol=0, msg=name)
    assert runs[0]["epochs_seen"] == [1, 2] and runs[1]["epochs_seen"] == []
    assert runs[0]["resume_exists_after_training"]


@pytest.mark.slow
def test_torchrun_pretrain_stage(tmp_path):
    """`torchrun --nproc_per_node=2 -m unet_ssl pretrain` in a copy of the repository on the embedded sample."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("WORLD_SIZE", None)
    cli = [sys.executable, "-m", "unet_ssl"]
    params = ["--params", "params.yaml"]
    for step in (["data", "sample", "--no-dvc"], ["prepare-pretrain"]):
        subprocess.run([*cli, *params, *step], cwd=repo, env=env, check=True, capture_output=True)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("epochs: 3", "epochs: 1", 1))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "unet_ssl", "pretrain"]
    out = subprocess.run(torchrun, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes" in out.stdout and out.stdout.count("pretrain: ") == 1
    assert (repo / "checkpoints" / "pretrained.pt").is_file()
    assert not (repo / "checkpoints" / "resume" / "pretrain.pt").exists()
