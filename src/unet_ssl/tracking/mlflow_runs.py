"""MLflow at the edge: one parent run per pipeline execution with one nested run per stage, in a
SQLite store inside the repository's `mlruns/` (or wherever MLFLOW_TRACKING_URI points).

- Execution: every `dvc repro` / `dvc exp run` is its own parent run. DVC runs the stages of one
  execution one after the other as children of one `dvc` process; that process (host, pid and start
  time) names the execution, so the first stage opens a new parent and the later ones join it. A stage
  started by hand (no DVC) is an execution of its own. Repeating the same settings never reuses an
  older parent; `log_to_pipeline` writes onto the current execution's parent only.
- Provenance: every run (parent and stage) is tagged with the git commit, whether the working tree
  differs from it (`git_dirty`) and the sha256 of that difference (`git diff HEAD`; "clean" when none).
- Data: `StageRun.log_data` hashes what a stage reads and logs it as an MLflow dataset input (on the
  stage run and on its parent), so the runs table's Dataset column shows the data version.
- Leftovers: a RUNNING run whose process died (SIGKILL, power loss) is marked KILLED by the next stage
  that starts, whichever pipeline it belonged to; a parent too, once its children are over.

Nothing in the training core imports this module; stages hand it plain dicts. Without MLflow
installed, `stage_run` yields a StageRun that does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unet_ssl.tracking.versions import data_version, provenance, repo_root

log = logging.getLogger(__name__)

EXPERIMENT = "unet-ssl"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens the Model training view
# Overrides the execution id (tests, scripts making several executions in one process).
EXECUTION_ENV = "UNET_SSL_EXECUTION"


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


# --- executions ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Execution:
    """The process that owns one pipeline execution: the `dvc` process running the stages, or the stage
    process itself when no DVC started it."""
    host: str
    pid: int
    start: str  # process start time, so a reused pid is another execution

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"


def _proc(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[19]


def _proc_env_has(pid: int, names: tuple[str, ...]) -> bool | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        try:
            import psutil

            return any(n in psutil.Process(pid).environ() for n in names)
        except Exception:
            return None
    return any(entry.split(b"=", 1)[0].decode(errors="replace") in names for entry in environ)


def process_start(pid: int) -> str:
    found = _proc(pid)
    if found:
        return found[1]
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:
        return ""


def _parent_pid(pid: int) -> int | None:
    found = _proc(pid)
    if found:
        return found[0]
    if pid == os.getpid():
        return os.getppid()
    try:
        import psutil

        return psutil.Process(pid).ppid()
    except Exception:
        return None


def current_execution() -> Execution:
    """DVC starts each stage command (through a shell, maybe torchrun) with DVC_STAGE / DVC_ROOT in its
    environment; the nearest ancestor whose environment lacks them is the `dvc` process running this
    execution (`dvc repro`, `dvc exp run`, or a queue worker's `dvc exp exec-run`). Outside DVC, or when
    the ancestors cannot be read, the execution is this process. $UNET_SSL_EXECUTION overrides it."""
    host = socket.gethostname()
    if os.environ.get(EXECUTION_ENV):
        return Execution(host, os.getpid(), f"env-{os.environ[EXECUTION_ENV]}")
    markers = tuple(n for n in ("DVC_STAGE", "DVC_ROOT") if n in os.environ)
    owner = os.getpid()
    if markers:
        pid = _parent_pid(owner)
        for _ in range(32):
            if not pid or pid <= 1:
                break
            inside = _proc_env_has(pid, markers)
            if inside is None:
                break
            if not inside:
                owner = pid
                break
            pid = _parent_pid(pid)
    return Execution(host, owner, process_start(owner))


def group_key(params: dict, execution: str) -> str:
    """Stages of one execution that share their params share one parent run."""
    blob = json.dumps(params, sort_keys=True, default=str) + execution
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# --- names ----------------------------------------------------------------------------------------------

def _true(value) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def describe(params: dict, tags: dict | None = None) -> str:
    """What a run is, for its name: method, encoder trained/frozen, skips on/off, labelled subset, seed,
    e.g. "simclr trained skip 90% s0" (method "none" reads "scratch"); parts the params lack are left out."""
    tags, pre, ft = tags or {}, params.get("pretrain") or {}, params.get("finetune") or {}
    parts = []
    method = tags.get("method", pre.get("method"))
    if method is not None:
        parts.append("scratch" if str(method) == "none" else str(method))
    freeze = tags.get("freeze_encoder", ft.get("freeze_encoder"))
    if freeze is not None:
        parts.append("frozen" if _true(freeze) else "trained")
    skip = tags.get("skip_connections", ft.get("skip_connections"))
    if skip is not None:
        parts.append("skip" if _true(skip) else "noskip")
    subset = tags.get("subset", ft.get("subset"))
    if subset is not None:
        try:
            parts.append(f"{float(subset) * 100:g}%")
        except ValueError:
            parts.append(str(subset))
    seed = tags.get("seed", params.get("seed"))
    if seed is not None:
        parts.append(f"s{seed}")
    return " ".join(parts)


def _headline_tags(params: dict, tags: dict) -> dict[str, str]:
    pre, ft = params.get("pretrain") or {}, params.get("finetune") or {}
    found = {"method": pre.get("method"), "freeze_encoder": ft.get("freeze_encoder"),
             "skip_connections": ft.get("skip_connections"), "subset": ft.get("subset"), "seed": params.get("seed")}
    return {k: str(tags.get(k, v)) for k, v in found.items() if tags.get(k, v) is not None}


# --- the store ------------------------------------------------------------------------------------------

def _find_parent(mlflow, experiment_id: str, execution: str, key: str):
    runs = mlflow.search_runs([experiment_id], filter_string=(
        f"tags.execution = '{execution}' and tags.pipeline_group = '{key}' and tags.role = 'pipeline'"),
        output_format="list", max_results=1)
    return runs[0].info.run_id if runs else None


def experiment_id(mlflow) -> str:
    """The project's experiment (created on first use), tagged as custom model development so the UI
    opens its Model training view."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        try:  # with the SQLite store MLflow puts artifacts beside the database, under mlruns/<experiment id>/
            return mlflow.create_experiment(EXPERIMENT, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_url(store: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> str:
    """Address of the experiment's Model training view in `mlflow ui`."""
    import mlflow

    mlflow.set_tracking_uri(store or tracking_uri())
    return f"http://{host}:{port}/#/experiments/{experiment_id(mlflow)}?workflowType=machine_learning"


class StageRun:
    """What a stage logs to; a no-op with a warning when MLflow is not installed (e.g. a bare GPU box)."""

    def __init__(self, mlflow=None, parent_id: str | None = None):
        self.mlflow = mlflow
        self.run_id = mlflow.active_run().info.run_id if mlflow else None
        self.parent_id = parent_id

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

    def log_data(self, name: str, paths: Path | str | list, context: str) -> dict[str, str] | None:
        """Records what the stage read (a file, a folder or a list of files) as an MLflow dataset input
        named `name` whose digest is its content hash (see `data_version`), on this run and on the
        pipeline's parent run; returns the version, or None when MLflow is absent or the data is missing."""
        if not self.mlflow:
            return None
        try:
            version = data_version(paths)
        except FileNotFoundError as missing:
            log.warning("dataset %s: %s is missing; not logged", name, missing)
            return None
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        items = [Path(p).resolve() for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
        where = items[0] if len(items) == 1 else Path(os.path.commonpath([p.parent for p in items]))
        with warnings.catch_warnings():  # "file" and "" are both local sources: one class, registered twice
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(where))
        dataset = MetaDataset(source=source, name=name, digest=version["digest"])
        tags = {k: v for k, v in version.items() if k != "digest"}
        self.mlflow.log_input(dataset, context=context, tags=tags)
        if self.parent_id:
            entity = dataset._to_mlflow_entity()
            input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, v) for k, v in tags.items())]
            self.mlflow.MlflowClient().log_inputs(self.parent_id, [DatasetInput(entity, input_tags)])
        return version

    def log_to_pipeline(self, metrics: dict) -> None:
        """Plain metrics on this execution's parent run (headline scores for the runs table)."""
        if self.mlflow and self.parent_id:
            _log_metrics(self.mlflow.MlflowClient(), self.parent_id, metrics)

    def log_pytorch_model(self, model, image_size: int) -> None:
        """The fine-tuned model with MLflow's PyTorch flavour in the safe `pt2` format; the input
        example has batch size 2 so the exported graph keeps a free batch dimension. Its requirements are
        named, not inferred: inference imports the model in a subprocess (10 of the stage's 24 s on the
        sample) and picks up whatever else this process imported (tqdm, pandas, pydot)."""
        if not self.mlflow:
            return
        import mlflow.pytorch
        import numpy as np

        example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
        requirements = [f"mlflow=={self.mlflow.__version__}", f"numpy=={np.__version__}",
                        *mlflow.pytorch.get_default_pip_requirements()]  # torch and cloudpickle, pinned
        mlflow.pytorch.log_model(model.eval(), name="model", input_example=example, serialization_format="pt2",
                                 pip_requirements=requirements)


def _log_metrics(client, run_id: str, metrics: dict) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(name, float(value), now, 0) for name, value in metrics.items()
             if isinstance(value, (int, float)) and value == value]
    if batch:
        client.log_batch(run_id, metrics=batch)


def summary_metrics(prefix: str, scores: dict, class_names: list[str]) -> dict:
    """Flattens `segmentation_scores`-style dicts into MLflow metric names."""
    out = {f"{prefix}f1": scores["f1"], f"{prefix}jaccard": scores["jaccard"]}
    for metric in ("f1", "jaccard"):
        for name, value in zip(class_names, scores["per_class"][metric]):
            out[f"{prefix}{metric}_{name}"] = value
    if "paper_style" in scores:
        out |= {f"{prefix}paper_f1": scores["paper_style"]["f1"],
                f"{prefix}paper_jaccard": scores["paper_style"]["jaccard"]}
    return out


def _process_gone(tags: dict) -> bool:
    """True when the process that opened a run is known to have ended: it ran on this host and its
    pid is no longer alive, or now belongs to a process started at another time (runs without a pid
    tag predate it and count as gone)."""
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
    started = tags.get("pid_start")
    return bool(started) and not started.startswith("env-") and process_start(pid) not in ("", started)


def _end_stale_runs(mlflow, experiment_id: str) -> list[str]:
    """A SIGKILLed stage cannot end its MLflow runs; each stage that starts marks KILLED every RUNNING run
    of the experiment whose process is gone (host + pid tags; stage runs from before the pid tag count as
    gone), then every RUNNING pipeline parent whose own process is gone and none of whose children still
    runs. Runs of other tools without a pid tag (tuning) are left alone. Returns the ids it closed."""
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    closed = []
    for run in running:
        tags = run.data.tags
        if tags.get("role") == "pipeline" or ("pid" not in tags and tags.get("role") != "stage"):
            continue
        if _process_gone(tags):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            log.warning("MLflow run %s (%s) was left RUNNING by a process that died; marked KILLED",
                        run.info.run_id, run.info.run_name)
    for run in running:
        tags = run.data.tags
        if tags.get("role") != "pipeline" or ("pid" in tags and not _process_gone(tags)):
            continue
        children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}' "
                                      "and attributes.status = 'RUNNING'")
        if all(child.info.run_id in closed for child in children):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            log.warning("MLflow pipeline run %s (%s) was left RUNNING by a process that died; marked KILLED",
                        run.info.run_id, run.info.run_name)
    return closed


_current: dict[str, str] = {}  # group key -> parent run id of this process's latest stage_run


@contextmanager
def stage_run(stage: str, params: dict, tags: dict | None = None):
    """Opens this execution's parent run (found by execution and params, or created, named
    "pipeline <what>") and a nested run "<stage> <what>" for `stage`; logs all params flattened,
    provenance and DVC experiment tags; marks the runs FAILED (or KILLED on Ctrl-C) when the stage
    raises. First marks KILLED the runs that dead processes left RUNNING."""
    try:
        import mlflow
    except ImportError:
        log.warning("MLflow is not installed: stage %s runs without tracking", stage)
        yield StageRun()
        return
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment = experiment_id(mlflow)
    execution = current_execution()
    key = group_key(params, execution.id)
    label = describe(params, tags)
    base_tags = {
        **provenance(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "pipeline_group": key,
        "execution": execution.id,
        **({"dvc_exp_baseline_rev": os.environ["DVC_EXP_BASELINE_REV"]}
           if os.environ.get("DVC_EXP_BASELINE_REV") else {}),
    }
    flat = flatten(params)
    _end_stale_runs(mlflow, experiment)
    parent_id = _find_parent(mlflow, experiment, execution.id, key)
    if parent_id is None:
        parent = mlflow.start_run(experiment_id=experiment, run_name=f"pipeline {label}".strip(), tags={
            **base_tags, **_headline_tags(params, tags or {}), "role": "pipeline",
            "host": execution.host, "pid": str(execution.pid), "pid_start": execution.start})
        parent_id = parent.info.run_id
        mlflow.log_params(flat)
    else:
        mlflow.start_run(run_id=parent_id)
    _current[key] = parent_id
    mlflow.start_run(experiment_id=experiment, run_name=f"{stage} {label}".strip(), nested=True, tags={
        **base_tags, **{k: str(v) for k, v in (tags or {}).items()}, "role": "stage", "stage": stage,
        "host": socket.gethostname(), "pid": str(os.getpid()), "pid_start": process_start(os.getpid())})
    mlflow.log_params(flat)
    try:
        yield StageRun(mlflow, parent_id)
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
    """Copies final metrics (test scores, best validation Jaccard) onto the current execution's parent
    run as plain metrics, so the runs table and charts compare executions. Never onto an earlier
    execution's parent: without one for this execution it does nothing."""
    try:
        import mlflow
    except ImportError:
        return
    mlflow.set_tracking_uri(tracking_uri(repo_root()))
    key = group_key(params, current_execution().id)
    parent_id = _current.get(key) or _find_parent(mlflow, experiment_id(mlflow), current_execution().id, key)
    if parent_id:
        _log_metrics(mlflow.MlflowClient(), parent_id, metrics)
    else:
        log.warning("no pipeline run of this execution in MLflow: metrics %s not copied", sorted(metrics))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unet_ssl.tracking.mlflow_runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    url = sub.add_parser("ui-url", help="print the address of the experiment's Model training view in `mlflow ui`")
    url.add_argument("--store", help="tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    url.add_argument("--host", default="127.0.0.1")
    url.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    print(ui_url(args.store, args.host, args.port))


if __name__ == "__main__":
    main()
