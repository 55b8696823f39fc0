"""MLflow at the edge: one nested run per stage under a parent run per pipeline execution, in a
SQLite store inside the repository's `mlruns/` (or wherever MLFLOW_TRACKING_URI points).

Nothing in the training core imports this module; stages hand it plain dicts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

EXPERIMENT = "unet-ssl"


def repo_root(start: Path | None = None) -> Path:
    """The repository holding `dvc.yaml`; inside a DVC temporary experiment copy
    (`.dvc/tmp/exps/...`) it is the repository that made the copy, so runs land in one store."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return path


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = repo_root(root) / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """{'pretrain': {'lr': 0.001}} -> {'pretrain.lr': '0.001'}."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def group_key(params: dict, commit: str) -> str:
    """Stages of one pipeline execution share params, commit and DVC experiment name."""
    blob = json.dumps(params, sort_keys=True) + commit + os.environ.get("DVC_EXP_NAME", "")
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _find_parent(mlflow, experiment_id: str, key: str):
    runs = mlflow.search_runs([experiment_id], filter_string=f"tags.pipeline_group = '{key}' and tags.role = 'pipeline'",
                              output_format="list", max_results=1)
    return runs[0].info.run_id if runs else None


def _experiment_id(mlflow) -> str:
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:  # with the SQLite store MLflow puts artifacts beside the database, under mlruns/<experiment id>/
        return mlflow.create_experiment(EXPERIMENT)
    except Exception:  # another process created it first
        return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


class StageRun:
    """What a stage logs to; a no-op with a warning when MLflow is not installed (e.g. a bare GPU box)."""

    def __init__(self, mlflow=None):
        self.mlflow = mlflow
        self.run_id = mlflow.active_run().info.run_id if mlflow else None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.mlflow:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.mlflow and Path(path).exists():
            self.mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        if self.mlflow:
            self.mlflow.log_dict(data, name)

    def set_tags(self, tags: dict) -> None:
        if self.mlflow:
            self.mlflow.set_tags(tags)

    def log_pytorch_model(self, model, image_size: int) -> None:
        """The fine-tuned model with MLflow's PyTorch flavour in the safe `pt2` format; the input
        example has batch size 2 so the exported graph keeps a free batch dimension."""
        if not self.mlflow:
            return
        import mlflow.pytorch
        import numpy as np

        example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
        mlflow.pytorch.log_model(model.eval(), name="model", input_example=example, serialization_format="pt2")


def summary_metrics(prefix: str, scores: dict, class_names: list[str]) -> dict:
    """Flattens `segmentation_scores`-style dicts into MLflow metric names."""
    out = {f"{prefix}f1": scores["f1"], f"{prefix}jaccard": scores["jaccard"]}
    for metric in ("f1", "jaccard"):
        for name, value in zip(class_names, scores["per_class"][metric]):
            out[f"{prefix}{metric}_{name}"] = value
    if "paper_style" in scores:
        out |= {f"{prefix}paper_f1": scores["paper_style"]["f1"], f"{prefix}paper_jaccard": scores["paper_style"]["jaccard"]}
    return out


def _process_gone(tags: dict) -> bool:
    """True when the process that opened a run is known to have ended: it ran on this host and its
    pid is no longer alive (runs without a pid tag predate it and count as gone)."""
    if "pid" not in tags:
        return True
    if tags.get("host") != socket.gethostname():
        return False  # cannot tell from here
    pid = int(tags["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _end_stale_runs(mlflow, experiment_id: str, key: str, stage: str) -> None:
    """A SIGKILLed stage cannot end its own MLflow run; the next run of the same stage in the same
    pipeline group marks such leftovers KILLED, so none stays RUNNING forever."""
    client = mlflow.MlflowClient()
    stale = client.search_runs([experiment_id], filter_string=(
        f"tags.pipeline_group = '{key}' and tags.stage = '{stage}' and attributes.status = 'RUNNING'"))
    for run in stale:
        if _process_gone(run.data.tags):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow run %s of stage %s was left RUNNING by a process that died; marked KILLED",
                        run.info.run_id, stage)


@contextmanager
def stage_run(stage: str, params: dict, tags: dict | None = None):
    """Opens the pipeline's parent run (found by group key, or created) and a nested run for `stage`,
    logs all params flattened plus git commit and DVC experiment tags; marks the run FAILED (or
    KILLED on Ctrl-C) when the stage raises, and first marks KILLED any run of the same stage and
    group that a SIGKILLed process left RUNNING."""
    try:
        import mlflow
    except ImportError:
        log.warning("MLflow is not installed: stage %s runs without tracking", stage)
        yield StageRun()
        return
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment_id = _experiment_id(mlflow)
    commit = git_commit(root)
    key = group_key(params, commit)
    base_tags = {
        "git_commit": commit,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "pipeline_group": key,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    flat = flatten(params)
    parent_id = _find_parent(mlflow, experiment_id, key)
    if parent_id is None:
        parent = mlflow.start_run(experiment_id=experiment_id, run_name=f"pipeline-{base_tags['dvc_exp_name']}-{key[:6]}",
                                  tags={**base_tags, "role": "pipeline"})
        parent_id = parent.info.run_id
        mlflow.log_params(flat)
        mlflow.end_run()
    _end_stale_runs(mlflow, experiment_id, key, stage)
    mlflow.start_run(run_id=parent_id)
    mlflow.start_run(experiment_id=experiment_id, run_name=stage, nested=True,
                     tags={**base_tags, "role": "stage", "stage": stage, "host": socket.gethostname(), "pid": str(os.getpid())})
    mlflow.log_params(flat)
    try:
        yield StageRun(mlflow)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()
    mlflow.end_run()


def log_to_pipeline(params: dict, metrics: dict) -> None:
    """Copies final test metrics onto the pipeline's parent run, so the UI compares executions."""
    try:
        import mlflow
    except ImportError:
        return
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    key = group_key(params, git_commit(root))
    experiment_id = _experiment_id(mlflow)
    parent_id = _find_parent(mlflow, experiment_id, key)
    if parent_id:
        client = mlflow.MlflowClient()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and value == value:
                client.log_metric(parent_id, name, float(value))
