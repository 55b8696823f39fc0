"""A small real Optuna study on the embedded sample (tiny epochs, 64px, a 64-photo pretraining set) in a
temporary folder with its own journal file and MLflow store: persisted, resumed, a diverging trial
pruned with its reason, nested MLflow runs, best values written; plus the seeding, the refusal to
mix training settings, and DVC's plan showing that plain `dvc repro` leaves the tuning stage out."""
import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import yaml

from unet_ssl.cli import main
from unet_ssl.core.stats import confusion_record, per_image_confusion
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain
from unet_ssl.experiments.tuning import (
    ORIGIN_ATTR,
    SIZES_ATTR,
    STOP_REASON_ATTR,
    Objective,
    TrialRuns,
    make_storage,
    open_study,
    search_space,
    storage_path,
)
from unet_ssl.experiments.tuning_report import write_report
from unet_ssl.paths import CONFUSION_ARTIFACT, PETS, PETS_MANIFEST, PRETRAIN_IMAGES

REPO = Path(__file__).resolve().parents[2]
TINY = {
    ("data", "image_size"): 64,
    ("data", "pretrain_limit"): 64,
    ("pretrain", "batch_size"): 32,
    ("finetune", "batch_size"): 8,
    ("finetune", "image_size"): 64,
    ("tune", "pretrain_epochs"): 1,
    ("tune", "pretrain_limit"): 0,
    ("tune", "finetune_epochs"): 2,
    ("tune", "storage"): "tuning/study.journal",
}


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for (group, key), value in TINY.items():
        params[group][key] = value
    return params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The sample prepared at 64px in a temporary folder, which is the working directory meanwhile."""
    root = tmp_path_factory.mktemp("tune")
    shutil.copytree(REPO / "sample", root / "data" / "raw")
    params = tiny_params()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        prepare_pets(Path("data/raw"), PETS.parent, params["data"], params["data"]["split_seed"])
        prepare_pretrain(Path("data/raw"), PRETRAIN_IMAGES.parent, params["data"], params["data"]["split_seed"])
        yield root


def load(params: dict) -> optuna.Study:
    return optuna.load_study(study_name=params["tune"]["study_name"],
                             storage=make_storage(storage_path(params["tune"])))


@pytest.mark.filterwarnings("ignore:Fixed parameter pretrain.temperature:UserWarning")
def test_study_persists_resumes_survives_a_diverging_trial_and_tracks_every_trial(workdir, capsys):
    params = tiny_params()
    names = [dim.name for dim in search_space(params["tune"])]

    main(["tune", "--n-trials", "2"])
    first = load(params)
    assert Path(params["tune"]["storage"]).is_file()  # relative to the working directory: no dvc.yaml above it
    assert [t.state for t in first.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert first.trials[0].params == {n: float(params[n.split(".")[0]][n.split(".")[1]]) for n in names}
    assert all(0 < t.value <= 1 for t in first.trials)
    printed = capsys.readouterr().out
    assert "dvc exp run -S pretrain.temperature=" in printed

    # A temperature that underflows float32 makes the NT-Xent loss NaN at the first step.
    first.enqueue_trial({"pretrain.temperature": 1e-45, "pretrain.lr": 1e-3, "finetune.lr": 1e-3})
    main(["tune", "--n-trials", "2"])  # resumes the same study in the same journal file
    study = load(params)
    assert len(study.trials) == 4
    diverged, after = study.trials[2], study.trials[3]
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert diverged.user_attrs[STOP_REASON_ATTR].startswith("diverged: pretrain simclr: loss became nan")
    assert after.state == optuna.trial.TrialState.COMPLETE, "the study goes on after the diverging trial"
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4

    best = yaml.safe_load(Path("reports/tuning_best.yaml").read_text())
    assert {f"{g}.{k}": v for g, values in best.items() for k, v in values.items()} == study.best_trial.params
    report = Path("reports/tuning.md").read_text()
    assert f"Trial {study.best_trial.number}: validation Jaccard **{study.best_value:.4f}**" in report
    assert "| 2 | PRUNED |" in report and "| pruned | 1 (of which diverged: 1) |" in report
    assert "1 pretraining epoch(s) of `simclr` on 64 photos and 2 fine-tuning epochs" in report
    assert re.search(r"\n- Data: [\d,]+ labelled pets of \d+ breeds \([\d,]+ cats?, [\d,]+ dogs?\) from `data/raw`, "
                     r"split \d+ train / \d+ validation / \d+ test", report)
    assert Path("reports/tuning_figures/history.png").stat().st_size > 0
    assert Path("reports/tuning_figures/contour_pretrain_temperature_pretrain_lr.png").stat().st_size > 0

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("unet-ssl").experiment_id])
    parents = [r for r in runs
               if r.data.tags.get("role") == "tuning" and r.data.tags["optuna_study"] == study.study_name]
    assert len(parents) == 1, "a resumed study keeps its one parent run"
    parent = parents[0]
    assert parent.data.metrics["best_val_jaccard"] == pytest.approx(study.best_value)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")} >= {
        "tuning/tuning.md", "tuning/tuning_best.yaml", "tuning/history.png", "tuning/importances.png",
        "tuning/contour_pretrain_temperature_pretrain_lr.png"}
    trials = {int(r.data.tags["optuna_trial"]): r for r in runs if r.data.tags.get("role") == "tuning_trial"
              and r.data.tags["optuna_study"] == study.study_name}
    assert sorted(trials) == [0, 1, 2, 3]
    for number, run in trials.items():
        frozen = study.trials[number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna_state"] == frozen.state.name
        assert {n: float(run.data.params[n]) for n in names} == pytest.approx(frozen.params)
        assert run.data.params["finetune.epochs"] == "2"
    assert trials[2].info.status == "KILLED" and trials[2].data.tags[STOP_REASON_ATTR].startswith("diverged")
    for number in (0, 1, 3):
        history = client.get_metric_history(trials[number].info.run_id, "val_jaccard")
        assert sorted(m.step for m in history) == [1, 2]
        assert {m.step: m.value for m in history} == pytest.approx(study.trials[number].intermediate_values)
        assert trials[number].data.metrics["best_val_jaccard"] == pytest.approx(study.trials[number].value)


def test_a_trial_is_pruned_between_epochs_but_never_after_its_last(workdir):
    """ThresholdPruner(lower=2) prunes every score it is asked about (a Jaccard is at most 1)."""
    params = tiny_params()
    states = {}
    for epochs in (2, 1):
        params["tune"]["finetune_epochs"] = epochs
        params["tune"]["study_name"] = f"prune-check-{epochs}"
        study = open_study(params)
        study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)
        study.optimize(Objective(params, TrialRuns(params, study)), n_trials=1)
        trial = study.trials[0]
        states[epochs] = (trial.state, sorted(trial.intermediate_values))
    assert states[2] == (optuna.trial.TrialState.PRUNED, [1])
    assert states[1] == (optuna.trial.TrialState.COMPLETE, [1])


def test_a_copied_study_reports_without_prepared_pets_or_with_other_ones(tmp_path, monkeypatch):
    """A study file shared into another workspace (README: Tuning) still gets its report, which says why it
    describes no data instead of describing pets the trials never saw."""
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SIZES_ATTR, {"pretrain_photos": 64, "train_pets": 30, "val_pets": 5})
    write_report(study, tiny_params(), {}, tmp_path / "tuning.md")
    assert "- Data: no prepared pets in this workspace" in (tmp_path / "tuning.md").read_text()
    manifest = tmp_path / PETS.parent / PETS_MANIFEST  # where the pets manifest is read
    manifest.parent.mkdir(parents=True)
    manifest.write_text("name,split\nBengal_1,train\nBengal_2,val\n")
    write_report(study, tiny_params(), {}, tmp_path / "tuning.md")
    assert ("- Data: not described: the pets prepared here have 1 validation pet, the study's trials scored 5."
            in (tmp_path / "tuning.md").read_text())


@pytest.mark.slow  # 28 s on a 2-core AVX2 box; the default suite checks one process's resumable study above
def test_two_processes_add_trials_to_one_study_at_once(workdir):
    params = tiny_params()
    before = len(load(params).trials) if Path(params["tune"]["storage"]).is_file() else 0
    workers = [subprocess.Popen([sys.executable, "-m", "unet_ssl", "tune", "--n-trials", "1", "--seed", str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (10, 20)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = load(params).trials
    assert len(trials) == before + 2
    assert [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("unet-ssl").experiment_id],
                              f"tags.role = 'tuning' and tags.optuna_study = '{params['tune']['study_name']}'")
    assert len(runs) == 1, "processes starting together share one parent run"


def ask_values(params: dict, n: int) -> list[dict]:
    """Asks `n` trials of the real sampler and storage, telling each a score that depends on its values."""
    study = open_study(params)
    space = search_space(params["tune"])
    asked = []
    for _ in range(n):
        trial = study.ask()
        values = {dim.name: dim.suggest(trial) for dim in space}
        study.tell(trial, values["finetune.lr"] * values["pretrain.temperature"])
        asked.append(values)
    return asked


def test_same_seed_and_storage_reproduce_the_sampled_values(tmp_path):
    params = tiny_params()
    params["tune"]["sampler_startup_trials"] = 2  # so TPE itself, not only the random start, is checked
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        params["tune"] |= {"storage": str(tmp_path / f"{name}.journal"), "seed": seed}
        runs[name] = ask_values(params, 5)
    assert runs["a"] == runs["b"]
    assert runs["a"][1:] != runs["c"][1:]  # trial 0 is the params.yaml baseline in both
    params["tune"] |= {"storage": str(tmp_path / "a.journal"), "seed": 0}
    resumed = ask_values(params, 2)
    assert not any(values in runs["a"] for values in resumed), "a resumed study samples new values"
    assert len(load(params).trials) == 7


def test_resuming_with_other_training_settings_or_an_unknown_key_is_refused(tmp_path):
    params = tiny_params()
    params["tune"]["storage"] = str(tmp_path / "study.journal")
    open_study(params)
    params["tune"]["finetune_epochs"] = 3
    with pytest.raises(ValueError, match="finetune.epochs"):
        open_study(params)
    assert len(open_study(params, adding_trials=False).trials) == 1  # reading it (for the report) is fine
    params["tune"] |= {"study_name": "other", "space": {"pretrain.learning_rate": {"low": 1e-4, "high": 1e-2}}}
    with pytest.raises(ValueError, match="pretrain.learning_rate"):
        open_study(params)


def test_a_study_keeps_its_mlflow_parent_run_and_a_new_study_of_the_same_name_gets_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params()
    params["tune"]["storage"] = str(tmp_path / "study.journal")
    first = TrialRuns(params, open_study(params)).parent_id
    assert TrialRuns(params, open_study(params)).parent_id == first
    Path(params["tune"]["storage"]).unlink()
    assert TrialRuns(params, open_study(params)).parent_id != first


def test_the_study_of_a_dvc_temporary_experiment_is_the_repositorys(tmp_path, monkeypatch):
    temporary = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    temporary.mkdir(parents=True)
    monkeypatch.chdir(temporary)
    assert storage_path({"storage": "tuning/study.journal"}) == tmp_path / "tuning" / "study.journal"


def test_plain_dvc_repro_leaves_the_tuning_pipeline_out(tmp_path, monkeypatch):
    """DVC's own planner, as `dvc repro` calls it, on the repository's dvc.yaml files."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    for name in ("dvc.yaml", "tuning/dvc.yaml", "params.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # targets are read as from the root, as `dvc repro` there does
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(str(tmp_path))
    repo = Repo(str(tmp_path))

    def plan(*targets: str) -> list[str]:
        stages = collect_stages(repo, list(targets))
        return [stage.addressing for stage in plan_repro(get_active_graph(repo.index.graph), stages)]

    root = plan("dvc.yaml")  # what `dvc repro` with no target runs
    assert "report" in root and "tuning/dvc.yaml:tune" not in root
    tuning = plan("tuning/dvc.yaml")
    assert tuning[-1] == "tuning/dvc.yaml:tune" and "prepare_pets" in tuning and "pretrain" not in tuning
    tune_stage = next(s for s in repo.index.stages if s.addressing == "tuning/dvc.yaml:tune")
    params_file = next(d for d in tune_stage.deps if d.def_path == "params.yaml")
    assert Path(params_file.fs_path) == tmp_path / "params.yaml", "the stage reads the root params.yaml"


def test_compare_reports_the_test_scores_of_pipeline_runs_grouped_by_tuned_and_baseline_values(tmp_path, monkeypatch,
                                                                                                capsys):
    """`unet-ssl tune --compare` reads the pipeline runs of named DVC experiments from MLflow and groups them
    by their values of the searched params: the study's best trial against its params.yaml baseline."""
    from optuna.distributions import FloatDistribution

    from unet_ssl.tracking import mlflow_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    study = open_study(params, adding_trials=False)
    space = {dim.name: FloatDistribution(dim.low, dim.high, log=dim.log) for dim in search_space(params["tune"])}
    baseline = {"pretrain.temperature": 0.2, "pretrain.lr": 1e-3, "finetune.lr": 1e-3}
    tuned = {"pretrain.temperature": 0.37, "pretrain.lr": 5e-4, "finetune.lr": 2e-3}
    study.add_trial(optuna.trial.create_trial(params=baseline, distributions=space, value=0.5,
                                              user_attrs={ORIGIN_ATTR: "params.yaml"}))
    study.add_trial(optuna.trial.create_trial(params=tuned, distributions=space, value=0.6))
    target = torch.randint(0, 3, (10, 16, 16), generator=torch.Generator().manual_seed(0))
    arms = (("paper-s0", baseline, 0, 0.50, 0.3), ("tuned-s0", tuned, 0, 0.60, 0.05),
            ("tuned-s1", tuned, 1, 0.70, 0.05), ("paper-old-s1", baseline, 1, 0.50, None))
    for name, values, seed, score, error in arms:
        run_params = copy.deepcopy(params) | {"seed": seed}
        for key, value in values.items():
            group, leaf = key.split(".")
            run_params[group][leaf] = value
        monkeypatch.setenv("DVC_EXP_NAME", name)
        with mlflow_runs.stage_run("evaluate", run_params) as run:
            if error is not None:  # what the evaluate stage logs; runs of older versions logged nothing
                wrong = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed)) < error
                pred = torch.where(wrong, (target + 1) % 3, target)
                run.log_dict(confusion_record(torch.arange(10), per_image_confusion(pred, target, 3)),
                             CONFUSION_ARTIFACT)
        mlflow_runs.log_to_pipeline(run_params, {"test_jaccard": score, "test_f1": score + 0.1,
                                                 "test_jaccard_border": score / 2})
    main(["tune", "--compare", "paper-s0", "tuned-s0", "tuned-s1"])
    text = (tmp_path / "reports" / "tuning_test.md").read_text()
    assert "| baseline (params.yaml) | 0.2 | 0.001 | 0.001 | 0 | 0.5000 |" in text
    assert "| tuned (best trial) | 0.37 | 0.0005 | 0.002 | 0, 1 | 0.6500 ± 0.0707 |" in text
    paired = next(line for line in text.splitlines() if line.startswith("Tuned minus baseline"))
    assert "paired by seed (seeds 0): +" in paired and "(95% CI +" in paired and ", better)" in paired
    main(["tune", "--compare", "paper-old-s1", "tuned-s0", "tuned-s1"])
    text = (tmp_path / "reports" / "tuning_test.md").read_text()
    assert "paired by seed (seeds 1): +0.200, no interval (per-image scores not recorded)." in text
    assert ", better)" not in text
    with pytest.raises(SystemExit):
        main(["tune", "--compare", "never-run"])
    assert "no finished pipeline run with test scores for DVC experiment 'never-run'" in capsys.readouterr().err
