"""MLflow tracking at the edge, against a real SQLite store: provenance tags, dataset inputs with content
digests, one parent run per execution (a repeat never overwrites an earlier one), stale runs of dead
processes closed in any group, readable run names, and a no-op without MLflow."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from unet_ssl.core.checkpoint import READ_CHUNK
from unet_ssl.tracking import mlflow_runs, versions
from unet_ssl.tracking.mlflow_runs import describe, log_to_pipeline, stage_run

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"seed": 0, "pretrain": {"method": "simclr", "epochs": 1},
          "finetune": {"freeze_encoder": False, "skip_connections": True, "subset": 0.9}}
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed git repository laid out like this one (dvc.yaml, params.yaml, a metrics file, a
    prepared data file), as the working directory, in a fresh execution of its own."""
    ws = tmp_path / "repo"
    (ws / "metrics").mkdir(parents=True)
    (ws / "data" / "prepared" / "pets").mkdir(parents=True)
    shutil.copy2(REPO / "dvc.yaml", ws / "dvc.yaml")
    (ws / "params.yaml").write_text("seed: 0\n")
    (ws / "metrics" / "evaluate.json").write_text("{}\n")
    (ws / "data" / "prepared" / "pets" / "pets.pt").write_bytes(os.urandom(3 * READ_CHUNK // 2))
    (ws / ".gitignore").write_text("/data/prepared\n")
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "initial")
    monkeypatch.chdir(ws)
    monkeypatch.setenv(mlflow_runs.EXECUTION_ENV, uuid.uuid4().hex)
    return ws


def experiment_id(client) -> str:
    return client.get_experiment_by_name(mlflow_runs.EXPERIMENT).experiment_id


def test_provenance_names_commit_dirty_flag_and_diff_hash(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    head = git(repo, "rev-parse", "HEAD").strip()
    clean = versions.provenance()
    assert clean == {"git_commit": head, "mlflow.source.git.commit": head, "git_dirty": "false",
                     "git_diff_sha256": "clean", "git_untracked": "0"}
    # a pipeline output (metrics/evaluate.json is a DVC metric) and an untracked file leave it clean
    (repo / "metrics" / "evaluate.json").write_text('{"test": 1}\n')
    (repo / "notes.txt").write_text("scratch\n")
    assert versions.provenance() | {"git_untracked": "0"} == clean
    assert versions.provenance()["git_untracked"] == "1"
    # a change to a tracked input makes it dirty, hashed as `git diff HEAD` of that change
    (repo / "params.yaml").write_text("seed: 1\n")
    dirty = versions.provenance()
    diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", "params.yaml"], cwd=repo, capture_output=True,
                          check=True).stdout
    assert dirty["git_dirty"] == "true" and dirty["git_diff_sha256"] == hashlib.sha256(diff).hexdigest()
    (repo / "params.yaml").write_text("seed: 2\n")
    assert versions.provenance()["git_diff_sha256"] not in (dirty["git_diff_sha256"], "clean")
    # outside a repository, or without git at all: unknown
    outside = tmp_path / "outside"
    outside.mkdir()
    assert set(versions.provenance(outside).values()) == {"unknown"}
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert set(versions.provenance().values()) == {"unknown"}


def test_data_version_hashes_files_and_uses_the_dvc_md5_of_tracked_folders(tmp_path: Path):
    one = tmp_path / "a.pt"
    one.write_bytes(os.urandom(READ_CHUNK + 7))
    sha = hashlib.sha256(one.read_bytes()).hexdigest()
    assert versions.data_version(one) == {"digest": sha[:12], "sha256": sha, "files": "1",
                                             "bytes": str(READ_CHUNK + 7)}
    raw = tmp_path / "data" / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "x.jpg").write_bytes(b"x")
    (raw / "sub" / "y.png").write_bytes(b"yy")
    files = {"x.jpg": b"x", "sub/y.png": b"yy"}
    listing = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in sorted(files.items()))
    folder = versions.data_version(raw)
    assert folder["sha256"] == hashlib.sha256(listing.encode()).hexdigest() and folder["files"] == "2"
    assert versions.data_version([raw / "x.jpg", raw / "sub" / "y.png"])["files"] == "2"
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 2c7df1386b4da666537b97a5a542cf08.dir\n  size: 3\n  nfiles: 2\n"
                                       "  hash: md5\n  path: data/raw\n")
    assert versions.data_version(raw) == {"digest": "2c7df1386b4d", "files": "2", "bytes": "3",
                                          "dvc_md5": "2c7df1386b4da666537b97a5a542cf08", "dvc_file": "data.dvc"}
    (raw / "new.jpg").write_bytes(b"z")  # data/raw no longer matches data.dvc: hashed instead
    assert "sha256" in versions.data_version(raw)
    with pytest.raises(FileNotFoundError):
        versions.data_version([tmp_path / "missing.pt"])


def test_stage_and_parent_runs_carry_provenance_names_and_the_dataset_digest(repo: Path, mlflow_client):
    pets = repo / "data" / "prepared" / "pets" / "pets.pt"
    with stage_run("finetune", PARAMS, {"method": "simclr", "subset": 0.9}) as run:
        version = run.log_data("pets", pets, "training")
        run.log_to_pipeline({"best_val_jaccard": 0.61})
    stage = mlflow_client.get_run(run.run_id)
    parent = mlflow_client.get_run(run.parent_id)
    head = git(repo, "rev-parse", "HEAD").strip()
    for r in (stage, parent):
        assert r.data.tags["git_commit"] == head and r.data.tags["git_dirty"] == "false"
        assert r.data.tags["git_diff_sha256"] == "clean"
        [logged] = r.inputs.dataset_inputs
        sha = hashlib.sha256(pets.read_bytes()).hexdigest()
        assert logged.dataset.name == "pets" and logged.dataset.digest == sha[:12] == version["digest"]
        tags = {t.key: t.value for t in logged.tags}
        assert tags["mlflow.data.context"] == "training" and tags["sha256"] == sha
    assert stage.info.run_name == "finetune simclr trained skip 90% s0"
    assert parent.info.run_name == "pipeline simclr trained skip 90% s0"
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.data.tags["role"] == "pipeline"
    assert parent.data.metrics["best_val_jaccard"] == 0.61 and parent.info.status == "FINISHED"
    experiment = mlflow_client.get_experiment_by_name(mlflow_runs.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert mlflow_runs.ui_url() == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
                                 "?workflowType=machine_learning")


def test_each_execution_is_its_own_parent_and_keeps_its_metrics(repo: Path, mlflow_client,
                                                                 monkeypatch: pytest.MonkeyPatch):
    params = {**PARAMS, "marker": uuid.uuid4().hex}
    parents = []
    for execution, score in (("first", 0.5), ("second", 0.7)):
        monkeypatch.setenv(mlflow_runs.EXECUTION_ENV, f"{params['marker']}-{execution}")
        with stage_run("finetune", params) as run:
            pass
        with stage_run("evaluate", params) as again:
            pass
        assert again.parent_id == run.parent_id  # the stages of one execution share one parent
        log_to_pipeline(params, {"test_jaccard": score, "test_f1": score + 0.1})
        parents.append(run.parent_id)
    assert parents[0] != parents[1]
    first, second = (mlflow_client.get_run(p) for p in parents)
    assert first.data.metrics == {"test_jaccard": 0.5, "test_f1": 0.6}
    assert second.data.metrics == {"test_jaccard": 0.7, "test_f1": pytest.approx(0.8)}
    assert [m.value for m in mlflow_client.get_metric_history(parents[0], "test_jaccard")] == [0.5]
    children = mlflow_client.search_runs([experiment_id(mlflow_client)], f"tags.mlflow.parentRunId = '{parents[0]}'")
    assert sorted(r.data.tags["stage"] for r in children) == ["evaluate", "finetune"]


def test_a_dvc_temporary_experiment_copy_logs_to_the_repositorys_own_store(repo: Path, monkeypatch):
    """`dvc exp run --temp` runs the stages in .dvc/tmp/exps/standalone/<name>, a copy with its own dvc.yaml:
    its runs belong in the repository's store, beside every other run (end to end: test_pipeline.py, slow)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmp8kq2x" / "src"
    copy.mkdir(parents=True)
    shutil.copy2(repo / "dvc.yaml", copy.parent / "dvc.yaml")
    own_store = f"sqlite:///{repo.resolve()}/mlruns/mlflow.db"
    assert mlflow_runs.tracking_uri(copy) == mlflow_runs.tracking_uri(repo) == own_store
    assert not (copy.parent / "mlruns").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # a store the user names wins
    assert mlflow_runs.tracking_uri(copy) == "sqlite:///elsewhere.db"


def test_stages_started_by_one_dvc_process_share_its_execution(tmp_path: Path):
    """Under DVC a stage runs as dvc -> shell (DVC_STAGE set) -> stage; the execution is the nearest
    ancestor without DVC_STAGE: here this test's process stands in for `dvc`."""
    env = {k: v for k, v in os.environ.items() if k not in (mlflow_runs.EXECUTION_ENV, "DVC_STAGE", "DVC_ROOT")}
    code = "from unet_ssl.tracking.mlflow_runs import current_execution as c; print(c().id)"
    under_dvc = [subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}"; true'], env={**env, "DVC_STAGE": stage},
                                capture_output=True, text=True, check=True).stdout.strip()
                 for stage in ("finetune", "evaluate")]
    me = mlflow_runs.Execution(socket.gethostname(), os.getpid(), mlflow_runs.process_start(os.getpid()))
    assert under_dvc == [me.id, me.id]
    by_hand = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert by_hand != me.id and by_hand.split(":")[1] != str(os.getpid())


def test_running_runs_of_dead_processes_are_killed_in_any_group(repo: Path, mlflow_client):
    experiment = mlflow_runs.experiment_id(__import__("mlflow"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    parent = mlflow_client.create_run(experiment, run_name="pipeline other", tags={
        "role": "pipeline", "pipeline_group": "other-group", "host": host, "pid": str(gone.pid)})
    child = mlflow_client.create_run(experiment, run_name="pretrain other", tags={
        "role": "stage", "stage": "pretrain", "pipeline_group": "other-group", "host": host, "pid": str(gone.pid),
        "mlflow.parentRunId": parent.info.run_id})
    alive = mlflow_client.create_run(experiment, run_name="alive", tags={
        "role": "stage", "stage": "pretrain", "pipeline_group": "other-group", "host": host, "pid": str(os.getppid())})
    tuning = mlflow_client.create_run(experiment, run_name="trial-0", tags={"role": "tuning_trial"})
    with stage_run("validate", PARAMS):
        pass
    status = {name: mlflow_client.get_run(r.info.run_id).info.status
              for name, r in (("parent", parent), ("child", child), ("alive", alive), ("tuning", tuning))}
    assert status == {"parent": "KILLED", "child": "KILLED", "alive": "RUNNING", "tuning": "RUNNING"}
    for r in (alive, tuning):
        mlflow_client.set_terminated(r.info.run_id, "FINISHED")


def test_run_names_say_what_the_run_is():
    assert describe(PARAMS) == "simclr trained skip 90% s0"
    assert describe({"seed": 2, "pretrain": {"method": "none"},
                     "finetune": {"freeze_encoder": True, "skip_connections": False, "subset": 0.01}}) == \
        "scratch frozen noskip 1% s2"
    assert describe(PARAMS, {"method": "mae_patch", "freeze_encoder": "True", "subset": "0.1", "seed": 3}) == \
        "mae_patch frozen skip 10% s3"
    assert describe({"data": {}, "profile": "grid-cpu"}) == ""


def test_without_mlflow_stages_run_untracked(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with stage_run("finetune", PARAMS) as run:
        run.log_metrics({"loss": 1.0})
        assert run.log_data("pets", repo / "data" / "prepared" / "pets" / "pets.pt", "training") is None
        run.log_to_pipeline({"best_val_jaccard": 0.5})
    assert run.run_id is None
    log_to_pipeline(PARAMS, {"test_jaccard": 0.5})


def test_ui_url_command_prints_the_model_training_view(tracking_store: str, capsys):
    mlflow_runs.main(["ui-url", "--store", tracking_store, "--port", "5123"])
    out = capsys.readouterr().out.strip()
    assert out.startswith("http://127.0.0.1:5123/#/experiments/") and out.endswith("?workflowType=machine_learning")
