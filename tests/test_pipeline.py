"""The whole pipeline on the embedded sample, in a temporary copy of the repository: `dvc repro`,
then `dvc exp run --temp -S finetune.subset=...`, with a real DVC repo and a real MLflow store."""
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import PIPELINE_TINY as TINY, run_checked as run  # the pipeline_repo fixture is in conftest.py


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
    stages = {r[0] for r in mlflow_rows(repo, "select value from tags where key = 'stage'")}
    assert {"prepare_pets", "validate", "pretrain", "finetune", "evaluate", "report"} <= stages
    # every stage run is nested under one pipeline run, which carries the test scores
    parents = mlflow_rows(repo, "select run_uuid from tags where key = 'role' and value = 'pipeline'")
    assert len(parents) == 1
    children = mlflow_rows(repo, f"select count(*) from tags where key = 'mlflow.parentRunId' and value = '{parents[0][0]}'")
    assert children[0][0] >= 7
    metric = mlflow_rows(repo, f"select value from latest_metrics where key = 'test_jaccard' and run_uuid = '{parents[0][0]}'")
    assert metric and metric[0][0] == pytest.approx(scores["jaccard"])
    # the fine-tuned model is logged with MLflow's PyTorch flavour, per-epoch metrics are there
    assert mlflow_rows(repo, "select count(*) from metrics where key = 'val_jaccard'")[0][0] >= TINY[("finetune", "epochs")]
    assert list((repo / "mlruns").rglob("MLmodel"))


def test_repro_again_does_nothing(pipeline_repo):
    repo, env, _ = pipeline_repo
    out = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in out


def test_exp_run_with_a_new_subset_reruns_only_what_depends_on_it(pipeline_repo):
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
