"""Optuna study over the SimCLR temperature and the learning rates, at the edge of the core.

Each trial pretrains and fine-tunes with a short profile (the `tune` group of params.yaml) and
scores the validation split, which is carved from the training side; the test split is never
read. The study lives in a journal file under the repository, so a second `unet-ssl tune` adds
trials to it and several processes can work on it at once. Every trial is an MLflow run nested
under one parent run for the study.
"""
from __future__ import annotations

import copy
import fcntl
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import torch
from mlflow.entities import Metric, Param, RunTag

from unet_ssl.core.finetuning import FinetuneConfig, finetune
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.runtime import NonFiniteLossError, make_runtime, seed_everything
from unet_ssl.data.prepared import load_pets, load_tensors
from unet_ssl.data.splits import finetuning_splits
from unet_ssl.paths import PETS, PRETRAIN_IMAGES
from unet_ssl.tracking import mlflow_runs, versions

OBJECTIVE = "val_jaccard"
PROFILE_ATTR = "profile"  # study user attr: the settings every trial of the study shares
STOP_REASON_ATTR = "stop_reason"  # trial user attr: why a trial was pruned
ORIGIN_ATTR = "origin"  # trial user attr of a queued trial: where its values came from
SIZES_ATTR = "data_sizes"  # study user attr: how many images the trials train and score on
UID_ATTR = "uid"  # study user attr: tags its MLflow runs (a name and a path can be reused by a new study)


@dataclass(frozen=True)
class Dimension:
    """One searched parameter, named by its dotted params.yaml key (e.g. `pretrain.lr`)."""
    name: str
    low: float
    high: float
    log: bool

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def search_space(tune: dict) -> list[Dimension]:
    """`tune.space` -> dimensions; YAML reads `1e-4` as a string, so bounds go through float()."""
    space = [Dimension(name, float(spec["low"]), float(spec["high"]), bool(spec.get("log", False)))
             for name, spec in tune["space"].items()]
    for dim in space:
        if not (dim.low < dim.high and (dim.low > 0 or not dim.log)):
            raise ValueError(f"tune.space.{dim.name}: need low < high (and low > 0 on a log scale), "
                             f"got {dim.low}, {dim.high}")
    return space


def get_dotted(params: dict, name: str):
    group, _, key = name.rpartition(".")
    node = params
    for part in group.split(".") if group else []:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or key not in node:
        raise ValueError(f"tune names {name!r}, which params.yaml does not have")
    return node[key]


def set_dotted(params: dict, name: str, value) -> None:
    get_dotted(params, name)  # the key must exist: a typo in tune.space must not pass silently
    group, _, key = name.rpartition(".")
    node = params
    for part in group.split(".") if group else []:
        node = node[part]
    node[key] = value


def trial_params(params: dict, values: dict) -> dict:
    """The params one trial trains with: params.yaml, the short tuning profile, then the sampled values."""
    tune = params["tune"]
    out = copy.deepcopy(params)
    out["pretrain"]["epochs"] = tune["pretrain_epochs"]
    out["finetune"]["epochs"] = tune["finetune_epochs"]
    out["finetune"]["subset"] = tune["finetune_subset"]
    for name, value in values.items():
        set_dotted(out, name, value)
    return out


def study_profile(params: dict) -> dict:
    """What makes the trials of one study comparable: every training setting except the searched ones.
    Kept in the study, so resuming it with other settings is refused instead of mixing scores."""
    searched = {dim.name for dim in search_space(params["tune"])}
    base = trial_params(params, {})
    flat = mlflow_runs.flatten({k: base[k] for k in ("seed", "data", "pretrain", "finetune")})
    flat["tune.pretrain_limit"] = str(params["tune"]["pretrain_limit"])
    return {k: v for k, v in sorted(flat.items()) if k not in searched}


def storage_path(tune: dict) -> Path:
    """tune.storage, relative to the repository; inside a DVC temporary experiment copy that is the
    repository that made the copy (as for the MLflow store), so every run adds to the one study."""
    path = Path(tune["storage"])
    return path if path.is_absolute() else versions.repo_root() / path


def make_storage(path: Path) -> optuna.storages.JournalStorage:
    """A journal file: appends only, locked per write, so several processes can share one study."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_sampler(tune: dict, n_existing: int) -> optuna.samplers.TPESampler:
    """Seeded TPE. The seed is offset by the trials already in the study, so the same seed and the same
    storage give the same parameters, and a resumed study does not repeat the random start-up points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=int(tune["seed"]) + n_existing, multivariate=True,
                                          n_startup_trials=int(tune["sampler_startup_trials"]))


def make_pruner(tune: dict) -> optuna.pruners.BasePruner:
    name = tune["pruner"]
    if name == "median":
        # Steps are 1-based epochs and Optuna may prune at step == n_warmup_steps, hence the + 1.
        return optuna.pruners.MedianPruner(n_startup_trials=int(tune["pruner_startup_trials"]),
                                           n_warmup_steps=int(tune["pruner_warmup_epochs"]) + 1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"tune.pruner must be 'median', 'successive_halving' or 'none', got {name!r}")


def open_study(params: dict, adding_trials: bool = True) -> optuna.Study:
    """Creates the study or loads it; trials are not added to one made with other training settings
    (reading it is fine). On a new study the current params.yaml values are queued as the first
    trial, the baseline every other is compared to."""
    tune = params["tune"]
    storage = make_storage(storage_path(tune))
    name = tune["study_name"]
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                pruner=make_pruner(tune))
    study.sampler = make_sampler(tune, len(study.trials))
    profile = study_profile(params)
    stored = study.user_attrs.get(PROFILE_ATTR)
    if stored is None:
        study.set_user_attr(PROFILE_ATTR, profile)
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
    elif stored != profile and adding_trials:
        changed = sorted(k for k in stored.keys() | profile.keys() if stored.get(k) != profile.get(k))
        raise ValueError(f"study {name!r} in {tune['storage']} was run with other training settings "
                         f"({', '.join(changed)}); set tune.study_name to start a new study")
    space = search_space(tune)
    if adding_trials and not study.trials and tune["enqueue_current"]:
        study.enqueue_trial({dim.name: float(get_dotted(params, dim.name)) for dim in space},
                            user_attrs={ORIGIN_ATTR: "params.yaml"})
    return study


@contextmanager
def exclusive(lock_path: Path):
    """An advisory lock across processes, released even when the holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TrialRuns:
    """MLflow runs for a study: one parent (found again on resume by the study's uid), one nested run
    per trial. Uses the client API, so concurrent processes do not share a fluent run stack."""

    def __init__(self, params: dict, study: optuna.Study):
        tune = params["tune"]
        root = versions.repo_root()
        self.commit = versions.git_commit(root)
        self.study_tags = {"optuna_study": tune["study_name"], "optuna_storage": str(tune["storage"]),
                           "optuna_study_uid": study.user_attrs[UID_ATTR]}
        mlflow.set_tracking_uri(mlflow_runs.tracking_uri(root))
        self.client = mlflow.MlflowClient()
        self.experiment_id = mlflow_runs.experiment_id(mlflow)
        self.parent_id = self._find_or_create_parent(params)

    def _find_or_create_parent(self, params: dict) -> str:
        query = f"tags.optuna_study_uid = '{self.study_tags['optuna_study_uid']}' and tags.role = 'tuning'"
        found = self.client.search_runs([self.experiment_id], query, max_results=1,
                                        order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"tune-{params['tune']['study_name']}",
                                     tags={**self.study_tags, "role": "tuning", "git_commit": self.commit})
        search = {f"space.{d.name}": f"[{d.low}, {d.high}]{' log' if d.log else ''}"
                  for d in search_space(params["tune"])}
        profile = {f"profile.{k}": v for k, v in study_profile(params).items()}
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in {**search, **profile}.items()])
        return run.info.run_id

    def start_trial(self, number: int, params: dict, values: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
            **self.study_tags, "role": "tuning_trial", "optuna_trial": str(number), "git_commit": self.commit,
            "mlflow.parentRunId": self.parent_id})
        flat = mlflow_runs.flatten(params) | {name: str(value) for name, value in values.items()}
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                               if isinstance(v, (int, float)) and v == v])

    def end_trial(self, run_id: str, state: optuna.trial.TrialState, reason: str = "") -> None:
        tags = [RunTag("optuna_state", state.name)] + ([RunTag(STOP_REASON_ATTR, reason[:5000])] if reason else [])
        self.client.log_batch(run_id, tags=tags)
        status = {optuna.trial.TrialState.COMPLETE: "FINISHED",
                  optuna.trial.TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status)


class Objective:
    """Pretrain with the trial's temperature and lr, fine-tune briefly, return the best validation
    Jaccard; every epoch's score goes to the pruner and to the trial's MLflow run."""

    def __init__(self, params: dict, runs: TrialRuns):
        self.params = params
        self.space = search_space(params["tune"])
        self.runs = runs
        self.runtime = make_runtime(params["runtime"])
        self.pets = load_pets(PETS, params["finetune"]["image_size"])
        self.pretrain_images = self._pretrain_images(params)
        self.train_idx, self.val_idx, _ = finetuning_splits(self.pets["split"], params["tune"]["finetune_subset"],
                                                            params["seed"])
        if not len(self.val_idx):
            raise ValueError(f"{PETS} has no validation split; tuning needs data.val_fraction > 0")
        if "pretrain.temperature" in {d.name for d in self.space} and params["pretrain"]["method"] != "simclr":
            raise ValueError(f"tune.space searches pretrain.temperature, which only SimCLR uses, "
                             f"but pretrain.method is {params['pretrain']['method']!r}")

    @staticmethod
    def _pretrain_images(params: dict) -> torch.Tensor | None:
        """A seeded subset of the prepared photos (tune.pretrain_limit, 0 = all), the same for every trial."""
        if params["pretrain"]["method"] == "none":
            return None
        images = load_tensors(PRETRAIN_IMAGES)["images"]
        limit = int(params["tune"]["pretrain_limit"])
        if 0 < limit < images.shape[0]:
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(params["seed"]))
            images = images[order[:limit].sort().values]
        return images

    def sizes(self) -> dict[str, int]:
        n_photos = 0 if self.pretrain_images is None else self.pretrain_images.shape[0]
        return {"pretrain_photos": n_photos, "train_pets": len(self.train_idx), "val_pets": len(self.val_idx)}

    def __call__(self, trial: optuna.Trial) -> float:
        values = {dim.name: dim.suggest(trial) for dim in self.space}
        params = trial_params(self.params, values)
        run_id = self.runs.start_trial(trial.number, params, values)
        start = time.perf_counter()

        def on_finetune_epoch(epoch: int, row: dict) -> None:
            self.runs.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, epoch)
            trial.report(row[OBJECTIVE], epoch)
            # After the last epoch the training is done: the trial completes with its score, never pruned.
            if epoch < params["finetune"]["epochs"] and trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {type(trial.study.pruner).__name__} after fine-tuning epoch "
                                         f"{epoch} (val Jaccard {row[OBJECTIVE]:.4f})")

        try:
            # Seeded before each part, as the pipeline's stages are, so a trial scores what the pipeline would.
            pretrained = pretrain(self.pretrain_images, PretrainConfig(**params["pretrain"]),
                                  params["finetune"]["skip_connections"], self.runtime, seed_everything(params["seed"]),
                                  on_epoch=lambda e, row: self.runs.log_metrics(run_id, {"pretrain_loss": row["loss"]},
                                                                                e))
            result = finetune(self.pets["images"], self.pets["masks"], self.train_idx, self.val_idx,
                              FinetuneConfig(**params["finetune"]), pretrained, self.runtime,
                              seed_everything(params["seed"]), on_epoch=on_finetune_epoch)
        except NonFiniteLossError as error:
            # Pruned rather than failed: TPE then ranks the region below every finished trial.
            reason = f"diverged: {error}"
            trial.set_user_attr(STOP_REASON_ATTR, reason)
            self.runs.end_trial(run_id, optuna.trial.TrialState.PRUNED, reason)
            raise optuna.TrialPruned(reason) from error
        except optuna.TrialPruned as pruned:
            trial.set_user_attr(STOP_REASON_ATTR, str(pruned))
            self.runs.end_trial(run_id, optuna.trial.TrialState.PRUNED, str(pruned))
            raise
        except BaseException as error:
            self.runs.end_trial(run_id, optuna.trial.TrialState.FAIL, repr(error))
            raise
        selected = next(row for row in result["history"] if row["epoch"] == result["selected_epoch"])
        value = float(selected[OBJECTIVE])
        trial.set_user_attr("selected_epoch", result["selected_epoch"])
        self.runs.log_metrics(run_id, {f"best_{OBJECTIVE}": value, "selected_epoch": result["selected_epoch"],
                                       "trial_seconds": time.perf_counter() - start}, step=result["selected_epoch"])
        self.runs.end_trial(run_id, optuna.trial.TrialState.COMPLETE)
        return value


def run_study(params: dict, n_trials: int, timeout: float | None = None) -> tuple[optuna.Study, TrialRuns]:
    """Adds `n_trials` trials to the study (0 = none, e.g. to regenerate the report). A diverging trial
    is pruned with its reason and the study goes on; any other error stops it."""
    # Processes starting together would each set up a new study, MLflow's tables and the parent run.
    with exclusive(Path(f"{storage_path(params['tune'])}.setup.lock")):
        study = open_study(params, adding_trials=n_trials > 0)
        runs = TrialRuns(params, study)
    if n_trials > 0:
        objective = Objective(params, runs)
        study.set_user_attr(SIZES_ATTR, objective.sizes())
        study.optimize(objective, n_trials=n_trials, timeout=timeout, gc_after_trial=True)
    return study, runs


def best_values(study: optuna.Study) -> dict[str, float] | None:
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return dict(study.best_trial.params) if completed else None


def apply_command(values: dict[str, float]) -> str:
    """The one step that applies tuned values to the full pipeline, at full precision: training is
    chaotic enough that values rounded to 6 digits score differently from the trial."""
    return "dvc exp run " + " ".join(f"-S {name}={value!r}" for name, value in values.items())
