"""The whole pipeline on the embedded sample, in a temporary copy of the repository: `dvc repro`,
then `dvc exp run --temp -S finetune.subset=...`, with a real DVC repo and a real MLflow store."""
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
import yaml
from conftest import REPO  # the pipeline_repo fixture is in conftest.py
from conftest import run_checked as run


def mlflow_rows(repo: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:
        return db.execute(sql).fetchall()


def test_repro_writes_metrics_report_and_mlflow_runs(pipeline_repo):
    repo, _, out = pipeline_repo
    for stage in ("prepare_pets", "prepare_pretrain", "validate", "pretrain", "finetune", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    scores = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]
    assert 0 <= scores["jaccard"] <= 1 and 0 <= scores["f1"] <= 1 and scores["n_images"] > 0
    assert set(scores["per_class"]["jaccard"]) == {"pet", "background", "border"}
    assert (repo / "reports" / "pipeline.md").is_file() and (repo / "reports" / "figures" / "predictions.png").is_file()
    # the report states its data as every report does, and scores cats and dogs apart
    report = (repo / "reports" / "pipeline.md").read_text()
    assert re.search(r"- Data: [\d,]+ labelled pets of \d+ breeds \([\d,]+ cats?, [\d,]+ dogs?\)", report)
    assert re.search(r"- Pretraining photos: [\d,]+ of \d+ classes at \d+ px", report)
    for kind, species in json.loads((repo / "metrics" / "evaluate.json").read_text())["test_by_species"].items():
        assert f"| {kind} | {species['n_images']} |" in report
    stages = {r[0] for r in mlflow_rows(repo, "select value from tags where key = 'stage'")}
    assert {"prepare_pets", "validate", "pretrain", "finetune", "evaluate", "report"} <= stages
    # every stage run is nested under one pipeline run, which carries the test scores
    parents = mlflow_rows(repo, "select run_uuid from tags where key = 'role' and value = 'pipeline'")
    assert len(parents) == 1
    children = mlflow_rows(
        repo, f"select count(*) from tags where key = 'mlflow.parentRunId' and value = '{parents[0][0]}'")
    assert children[0][0] >= 7
    metric = mlflow_rows(
        repo, f"select value from latest_metrics where key = 'test_jaccard' and run_uuid = '{parents[0][0]}'")
    assert metric and metric[0][0] == pytest.approx(scores["jaccard"])
    # the fine-tuned model is logged with MLflow's PyTorch flavour, per-epoch metrics are there
    finetune = yaml.safe_load((repo / "params.yaml").read_text())["finetune"]
    assert mlflow_rows(repo, "select count(*) from metrics where key = 'val_jaccard'")[0][0] >= finetune["epochs"]
    # ... with its requirements named (mlflow, numpy, torch, cloudpickle; nothing the process merely imported),
    # and it loads back as a model that segments a batch of any size
    model_dir = next((repo / "mlruns").rglob("MLmodel")).parent
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert {line.split("==")[0] for line in requirements} == {"mlflow", "numpy", "torch", "cloudpickle"}
    size = finetune["image_size"]
    logits = mlflow.pytorch.load_model(str(model_dir))(torch.zeros(3, 3, size, size))
    assert tuple(logits.shape) == (3, 3, size, size)


def numbers(tree: object, path: str = "") -> dict[str, float]:
    """Every number of a JSON tree by its path."""
    if isinstance(tree, dict):
        return {k: v for key, item in tree.items() for k, v in numbers(item, f"{path}.{key}").items()}
    return {path: tree} if isinstance(tree, (int, float)) else {}


def test_main_reproduces_its_committed_records(pipeline_repo):
    """What a fresh clone's `dvc repro` on the embedded sample makes is what main commits: every code and params
    entry of dvc.lock, and every number of metrics/evaluate.json within 1e-6. A stale main cannot land."""
    repo, _, _ = pipeline_repo
    committed, produced = (yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (REPO, repo))
    assert produced.keys() == committed.keys()
    for stage in committed:
        code = [{d["path"]: d["md5"] for d in lock[stage].get("deps", []) if d["path"].startswith("src/")}
                for lock in (committed, produced)]
        assert code[1] == code[0], (f"stage {stage}: committed dvc.lock was made by other code; "
                                    "run `dvc repro` and commit")
        assert produced[stage].get("params") == committed[stage].get("params"), f"stage {stage}: other params"
    want, got = (numbers(json.loads((root / "metrics" / "evaluate.json").read_text())) for root in (REPO, repo))
    assert got.keys() == want.keys()
    off = {k: (want[k], got[k]) for k in want if abs(want[k] - got[k]) > 1e-6}
    assert not off, (f"metrics/evaluate.json differs from a fresh run (committed, produced): {off}. With the same "
                     "code and params this is another CPU type (fp32 kernels differ, README: Records): regenerate with "
                     "`make run` in a fresh clone and commit dvc.lock, metrics/ and reports/pipeline.md")
    print(f"\n[fresh clone] dvc.lock code and params entries of {len(committed)} stages identical; "
          f"{len(want)} numbers of metrics/evaluate.json equal within 1e-6 (test Jaccard {got['.test.jaccard']:.6f})")


def test_repro_again_does_nothing(pipeline_repo):
    repo, env, _ = pipeline_repo
    out = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in out


@pytest.mark.slow  # 75 s; the default suite runs `dvc exp run -S` in test_readme_commands.py and checks the
# temporary copy's store in tests/tracking/test_mlflow_runs.py
def test_exp_run_temp_with_a_new_subset_reruns_only_what_depends_on_it(pipeline_repo):
    repo, env, _ = pipeline_repo
    out = run(["dvc", "exp", "run", "--temp", "-S", "finetune.subset=0.1"], repo, env)
    assert "Running stage 'finetune'" in out and "Running stage 'evaluate'" in out
    for unchanged in ("prepare_pets", "prepare_pretrain", "validate", "pretrain"):
        assert f"Running stage '{unchanged}'" not in out
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert experiments, "dvc exp show lists the experiment"
    # the temporary copy logged into the repository's own store, tagged with the new subset
    subsets = mlflow_rows(repo, "select t.value from tags t join tags s on t.run_uuid = s.run_uuid "
                                "where t.key = 'subset' and s.key = 'stage' and s.value = 'finetune'")
    assert ("0.1",) in subsets
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))


def test_evaluate_scores_any_folder_of_images_and_trimaps(pipeline_repo, tmp_path):
    repo, env, _ = pipeline_repo
    images, trimaps = tmp_path / "images", tmp_path / "trimaps"
    shutil.copytree(repo / "sample" / "oxford-iiit-pet" / "images", images)
    shutil.copytree(repo / "sample" / "oxford-iiit-pet" / "annotations" / "trimaps", trimaps)
    out = tmp_path / "scores.json"
    run(["unet-ssl", "evaluate", "--checkpoint", str(repo / "checkpoints" / "finetuned.pt"), "--images", str(images),
         "--trimaps", str(trimaps), "--out", str(out)], repo, env)
    scores = json.loads(out.read_text())
    assert scores["n_images"] == len(list(images.glob("*.jpg")))
    assert 0 <= scores["f1"] <= 1 and 0 <= scores["jaccard"] <= 1
    assert set(scores["per_class"]) == {"f1", "jaccard"}
    next(trimaps.glob("*.png")).unlink()
    failed = subprocess.run(["unet-ssl", "evaluate", "--checkpoint", str(repo / "checkpoints" / "finetuned.pt"),
                             "--images", str(images), "--trimaps", str(trimaps), "--out", str(out)],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "no trimap for 1 image" in failed.stderr


def test_compare_checkpoints_scores_a_model_as_evaluate_does_and_finds_no_difference_with_itself(pipeline_repo):
    """scripts/compare_checkpoints.py: the fine-tuned model's test Jaccard is evaluate's, and a model paired
    with itself differs by exactly zero on every split and species."""
    repo, env, _ = pipeline_repo
    out = repo.parent / "comparison.json"
    model = "checkpoints/finetuned.pt"
    table = run([sys.executable, str(repo / "scripts" / "compare_checkpoints.py"), model, model, "--out", str(out)],
                repo, env)
    assert "| test | all |" in table and "| val | all |" in table
    record = json.loads(out.read_text())
    evaluated = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]["jaccard"]
    assert record["test/all"]["a"] == pytest.approx(evaluated, abs=1e-6)
    comparisons = [v for k, v in record.items() if "/" in k]
    assert comparisons and all(c["difference"] == c["low"] == c["high"] == 0 for c in comparisons)
