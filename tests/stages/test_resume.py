"""Interrupted and broken runs. A stage started as `unet-ssl <stage>` in a temporary workspace is
SIGKILLed in the middle of an epoch after a checkpoint was written, then re-run: it must resume
from the last complete epoch (losing only the epoch in progress), end with exactly the weights
and scores of an uninterrupted run with the same seed, and its killed MLflow run must end up
KILLED, not RUNNING. A NaN loss stops the stage with a clear error and marks its run FAILED."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import pytest
import torch
import yaml
from conftest import SMALL_PETS, build_workspace, run_cli

from unet_ssl.core import checkpoint
from unet_ssl.core.inference import evaluate_model
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain
from unet_ssl.tracking.mlflow_runs import stage_run

BAR = re.compile(r"epoch (\d+)/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
SMALL_DATA = {"data.image_size": 32, "data.pretrain_image_size": 32, "data.exclude": [], "runtime.device": "cpu",
              "runtime.channels_last": False, "runtime.num_threads": 1}


def prepare_pretrain_data(ws: Path, limit: int) -> None:
    data = yaml.safe_load((ws / "params.yaml").read_text())["data"]
    prepare_pretrain(ws / "data" / "raw", ws / "data" / "prepared" / "pretrain", {**data, "pretrain_limit": limit},
                     seed=0)


def prepare_pets_and_scratch_checkpoint(ws: Path) -> None:
    data = yaml.safe_load((ws / "params.yaml").read_text())["data"]
    prepare_pets(ws / "data" / "raw", ws / "data" / "prepared" / "pets", data, seed=0)
    none = pretrain(None, PretrainConfig(method="none"), True, make_runtime({"device": "cpu"}), seed_everything(0))
    checkpoint.save_atomic(none, ws / "checkpoints" / "pretrained.pt")


@dataclass(frozen=True)
class Interruptible:
    stage: str
    overrides: dict
    pets: list[str] | None  # sample pairs to copy (None: all)
    setup: Callable[[Path], None]
    output: str  # the stage's final checkpoint
    resume_log: str  # what the re-run logs when it resumes


STAGES = {
    "pretrain": Interruptible(
        "pretrain", {**SMALL_DATA, "pretrain.method": "simclr", "pretrain.epochs": 4, "pretrain.batch_size": 16,
                     "pretrain.image_size": 32},
        SMALL_PETS, lambda ws: prepare_pretrain_data(ws, limit=48), "checkpoints/pretrained.pt",
        "resuming pretraining from"),
    "finetune": Interruptible(
        "finetune", {**SMALL_DATA, "finetune.image_size": 32, "finetune.epochs": 4, "finetune.batch_size": 4,
                     "finetune.augment": "flip"},
        None, prepare_pets_and_scratch_checkpoint, "checkpoints/finetuned.pt", "resuming fine-tuning from"),
}


def stage_env() -> dict:
    """The workspace's own MLflow store, and progress bars even without a terminal: they tell where the stage is."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"PYTHONUNBUFFERED": "1", "UNET_SSL_PROGRESS": "1"}


def start(ws: Path, stage: str) -> subprocess.Popen:
    """`unet-ssl <stage>` as its own process."""
    return subprocess.Popen([sys.executable, "-m", "unet_ssl", stage], cwd=ws, env=stage_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_mid_epoch(proc: subprocess.Popen, timeout: float = 300) -> tuple[tuple[int, int, int, int], str]:
    """SIGKILLs the process once its progress bar shows an epoch after the first partly done
    (so at least one epoch checkpoint exists); returns (epoch, epochs, step, steps) at the kill."""
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        bars = BAR.findall("".join(seen[-400:]))
        if bars:
            epoch, epochs, step, steps = map(int, bars[-1])
            if epoch >= 2 and 1 <= step < steps:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                reader.join(5)
                return (epoch, epochs, step, steps), "".join(seen)
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the stage ended or stalled before it could be killed mid-epoch:\n{''.join(seen)[-3000:]}")


def stage_runs(ws: Path, stage: str) -> tuple[list, mlflow.MlflowClient]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unet-ssl").experiment_id
    return client.search_runs([experiment], f"tags.stage = '{stage}'", order_by=["attributes.start_time ASC"]), client


def scores_on_test_split(ws: Path) -> dict:
    """Test-split scores of a fine-tuned checkpoint (for the figures)."""
    pets = torch.load(ws / "data" / "prepared" / "pets" / "pets.pt", weights_only=True)
    test = pets["split"] == 2
    model = checkpoint.load_model(ws / "checkpoints" / "finetuned.pt")
    scores, _ = evaluate_model(model, pets["images"][test], pets["masks"][test], make_runtime({"device": "cpu"}),
                               16, 16)
    return {"f1": scores["f1"], "jaccard": scores["jaccard"]}


@pytest.mark.parametrize("name", ["pretrain", pytest.param("finetune", marks=pytest.mark.slow)])
def test_sigkilled_stage_resumes_and_matches_an_uninterrupted_run(make_workspace, capsys, name):
    spec = STAGES[name]
    reference_ws = make_workspace(spec.overrides, pets=spec.pets, pretrain=name == "pretrain", name="uninterrupted")
    spec.setup(reference_ws)
    ws = make_workspace(spec.overrides, pets=spec.pets, pretrain=name == "pretrain", name="interrupted")
    spec.setup(ws)
    reference = start(reference_ws, name)  # runs alongside, one thread each
    (kill_epoch, epochs, kill_step, steps), killed_log = kill_mid_epoch(start(ws, name))
    resume_file = ws / "checkpoints" / "resume" / f"{name}.pt"
    saved = checkpoint.load(resume_file)
    saved_epoch, saved_seconds = saved["epoch"], saved["clock"]["seconds"]
    rerun = subprocess.run([sys.executable, "-m", "unet_ssl", name], cwd=ws, capture_output=True, text=True,
                           env=stage_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ref_out, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err[-3000:]

    resumed = re.search(rf"{spec.resume_log} \S+ after epoch (\d+)", rerun.stderr)
    assert resumed, rerun.stderr[-3000:]
    resumed_after = int(resumed.group(1))
    rerun_epochs = sorted({int(e) for e, *_ in BAR.findall(rerun.stderr)})
    assert resumed_after == saved_epoch == kill_epoch - 1  # only the epoch in progress was lost
    assert rerun_epochs == list(range(saved_epoch + 1, epochs + 1))
    assert not resume_file.exists()

    got, want = checkpoint.load(ws / spec.output), checkpoint.load(reference_ws / spec.output)
    differing = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
    max_diff = max((got["model"][k].float() - want["model"][k].float()).abs().max().item() for k in want["model"])
    assert got["history"] == want["history"] and differing == [], (max_diff, differing[:5])
    if name == "pretrain":
        assert all(torch.equal(got["head"][k], v) for k, v in want["head"].items())
        final = {"final loss": got["history"][-1]["loss"]}, {"final loss": want["history"][-1]["loss"]}
    else:
        assert got["selected_epoch"] == want["selected_epoch"]
        final = ({"selected epoch": got["selected_epoch"],
                  "val Jaccard": max(r["val_jaccard"] for r in got["history"]),
                  **{f"test {k}": v for k, v in scores_on_test_split(ws).items()}},
                 {"selected epoch": want["selected_epoch"],
                  "val Jaccard": max(r["val_jaccard"] for r in want["history"]),
                  **{f"test {k}": v for k, v in scores_on_test_split(reference_ws).items()}})
        assert final[0] == final[1]

    runs, client = stage_runs(ws, name)
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    metric = "loss" if name == "pretrain" else "train_loss"
    logged = [sorted(m.step for m in client.get_metric_history(r.info.run_id, metric)) for r in runs]
    assert logged[0][: saved_epoch] == list(range(1, saved_epoch + 1)) and logged[1] == rerun_epochs
    seconds = client.get_run(runs[1].info.run_id).data.metrics[f"{name}_seconds"]
    assert seconds > saved_seconds > 0  # the resumed run's time counts the killed process's epochs
    with capsys.disabled():
        print(f"\n[kill-and-resume {name}] SIGKILL during epoch {kill_epoch}/{epochs} at step {kill_step}/{steps}; "
              f"last checkpoint: epoch {saved_epoch}; re-run resumed after epoch {resumed_after} and ran epochs "
              f"{rerun_epochs}; lost: {kill_step}/{steps} steps of epoch {kill_epoch} (0 complete epochs); "
              f"resumed {final[0]} vs uninterrupted {final[1]}; weights bit-identical ({len(want['model'])} tensors, "
              f"max |diff| {max_diff}); MLflow runs: {[r.info.status for r in runs]}")


def test_nan_loss_stops_the_stage_with_a_clear_error_and_fails_its_run(make_workspace, mlflow_client, capsys):
    ws = make_workspace({**{k: v for k, v in SMALL_DATA.items() if k != "runtime.num_threads"},
                         "pretrain.method": "simclr", "pretrain.epochs": 2, "pretrain.batch_size": 16,
                         "pretrain.image_size": 32, "pretrain.lr": 1e12}, pets=SMALL_PETS)
    prepare_pretrain_data(ws, limit=48)
    code, _, err = run_cli(["pretrain"], capsys)
    assert code == 1
    found = re.search(r"unet-ssl pretrain: error: pretrain simclr: loss became (nan|inf) at epoch (\d+), step (\d+) "
                      r"\(last finite loss: ([0-9.e+-]+)\); lower the learning rate or check the input data", err)
    assert found, err[-2000:]
    assert not (ws / "checkpoints" / "pretrained.pt").exists()
    experiment = mlflow_client.get_experiment_by_name("unet-ssl").experiment_id
    run = mlflow_client.search_runs([experiment], "tags.stage = 'pretrain'", order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FAILED"
    with capsys.disabled():
        print(f"\n[nan] {found.group(0)}")


def test_a_running_stage_of_a_live_process_is_not_marked_killed(make_workspace, mlflow_client, tracking_store):
    """Only runs whose process is gone are marked KILLED; a live one (same stage, same group) is left alone."""
    ws = make_workspace({}, pets=SMALL_PETS[:1], pretrain=False)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, yaml\nfrom unet_ssl.tracking.mlflow_runs import stage_run\n"
         "with stage_run('validate', yaml.safe_load(open('params.yaml'))) as run:\n"
         "    print(run.run_id, flush=True)\n    time.sleep(300)\n"],
        cwd=ws, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_store}, stdout=subprocess.PIPE, text=True)
    try:
        held = holder.stdout.readline().strip()
        with stage_run("validate", params):
            pass
        assert mlflow_client.get_run(held).info.status == "RUNNING"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with stage_run("validate", params):
        pass
    assert mlflow_client.get_run(held).info.status == "KILLED"


def test_non_finite_loss_message_counts_like_the_progress_bar():
    from unet_ssl.core.runtime import NonFiniteLossError, check_finite

    assert check_finite(torch.tensor(0.25), "finetune", 3, 0, None) == 0.25
    with pytest.raises(NonFiniteLossError,
                       match=r"finetune: loss became inf at epoch 3, step 1 \(no finite loss before it"):
        check_finite(torch.tensor(float("inf")), "finetune", 3, 0, None)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 5 \(last finite loss: 0.123457\)"):
        check_finite(torch.tensor(float("nan")), "pretrain simclr", 2, 4, 0.1234567)


def reseed(ws: Path) -> str:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump({**params, "seed": 1}, sort_keys=False))
    return "params.seed: 0 -> 1"


def new_pretrained_checkpoint(ws: Path) -> str:
    other = pretrain(None, PretrainConfig(method="none"), True, make_runtime({"device": "cpu"}), seed_everything(7))
    checkpoint.save_atomic(other, ws / "checkpoints" / "pretrained.pt")
    return "inputs.pretrained checkpoint: "


def fewer_pets(ws: Path) -> str:
    """The same data folder with one training pair less, prepared again."""
    pets = torch.load(ws / "data" / "prepared" / "pets" / "pets.pt", weights_only=True)
    name = pets["names"][int(torch.nonzero(pets["split"] == 0)[0])]
    raw = ws / "data" / "raw" / "oxford-iiit-pet"
    (raw / "images" / f"{name}.jpg").unlink()
    (raw / "annotations" / "trimaps" / f"{name}.png").unlink()
    data = yaml.safe_load((ws / "params.yaml").read_text())["data"]
    prepare_pets(ws / "data" / "raw", ws / "data" / "prepared" / "pets", data, seed=0)
    return "inputs.data: "


CHANGES = {"seed": reseed, "pretrained checkpoint": new_pretrained_checkpoint, "data": fewer_pets}


@pytest.fixture(scope="module")
def killed_finetune(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuning workspace whose stage was SIGKILLed mid-epoch, its resume state on disk; each resume-mismatch
    case changes a copy of it (one kill for all of them)."""
    spec = STAGES["finetune"]
    ws = build_workspace(tmp_path_factory.mktemp("killed") / "ws", spec.overrides, spec.pets, pretrain=False)
    spec.setup(ws)
    kill_mid_epoch(start(ws, "finetune"))
    return ws


# The seed case runs by default; the other two (about 15 s each on a 2-core AVX2 box) take the same path and
# check that the data and the pretrained checkpoint are part of the run's identity: `pytest -m slow`.
@pytest.mark.parametrize("change", [pytest.param(c, marks=() if c == "seed" else pytest.mark.slow) for c in CHANGES])
def test_a_resume_state_of_another_run_is_reported_and_never_used(killed_finetune, tmp_path, change):
    """SIGKILL mid-run, change one thing that determines the result, re-run: the stage names what differed,
    deletes the stale state and starts at epoch 1. Whatever differed, the stale state is dropped by the same code
    before training starts, so one change (the seed) also checks the end result bit for bit against a clean run
    with the new settings (each clean run costs a stage process)."""
    spec = STAGES["finetune"]
    ws = tmp_path / "killed"
    shutil.copytree(killed_finetune, ws, ignore=shutil.ignore_patterns("mlruns"))  # its runs log to the original's
    resume_file = ws / "checkpoints" / "resume" / "finetune.pt"
    assert resume_file.is_file()
    expected = CHANGES[change](ws)
    clean = tmp_path / "clean"  # the same workspace, never interrupted
    shutil.copytree(ws, clean, ignore=shutil.ignore_patterns("resume", "mlruns"))
    rerun = subprocess.run([sys.executable, "-m", "unet_ssl", "finetune"], cwd=ws, capture_output=True, text=True,
                           env=stage_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    line = next(l for l in rerun.stderr.splitlines() if "not resuming" in l)
    assert f"fine-tuning: not resuming {Path('checkpoints/resume/finetune.pt')}" in line and expected in line, line
    assert "resuming fine-tuning from" not in rerun.stderr
    epochs = spec.overrides["finetune.epochs"]
    assert sorted({int(e) for e, *_ in BAR.findall(rerun.stderr)}) == list(range(1, epochs + 1))
    assert not resume_file.exists()
    print(f"\n[resume: changed {change}] {line.split('WARNING ')[-1][:300]}")
    if change != "seed":
        return
    reference = subprocess.run([sys.executable, "-m", "unet_ssl", "finetune"], cwd=clean, capture_output=True,
                               text=True, env=stage_env())
    assert reference.returncode == 0, reference.stderr[-3000:]
    got, want = checkpoint.load(ws / spec.output), checkpoint.load(clean / spec.output)
    assert got["history"] == want["history"]
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
