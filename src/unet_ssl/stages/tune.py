"""`unet-ssl tune` (and the optional stage in tuning/dvc.yaml): runs trials, then writes the study's
reports and puts them on its MLflow parent run (`unet_ssl.experiments.tuning_report`); `--compare`
scores the tuned values on the test split from full pipeline runs."""
from __future__ import annotations

import time
from pathlib import Path

from unet_ssl.experiments.tuning import apply_command, best_values, open_study, run_study
from unet_ssl.experiments.tuning_report import (
    log_to_parent,
    plot_study,
    summary,
    write_best,
    write_report,
    write_test_comparison,
)
from unet_ssl.paths import TUNING_BEST, TUNING_REPORT, TUNING_TEST_REPORT


def compare(params: dict, experiments: list[str]) -> None:
    study = open_study(params, adding_trials=False)
    write_test_comparison(params, study, experiments)
    print(f"tune: wrote {TUNING_TEST_REPORT} from {len(experiments)} pipeline runs")


def run(params: dict, n_trials: int | None = None, timeout: float | None = None) -> None:
    tune = params["tune"]
    n_trials = tune["n_trials"] if n_trials is None else n_trials
    start = time.perf_counter()
    study, runs = run_study(params, n_trials, timeout)
    figures = plot_study(study)
    write_report(study, params, figures)
    best = best_values(study)
    files = [TUNING_REPORT, *[f for f in figures.values() if isinstance(f, Path)]]
    if best is not None:
        write_best(best, study.best_trial, study.study_name)
        files.append(TUNING_BEST)
    log_to_parent(runs, study, files)
    facts = summary(study)
    print(f"tune: study {study.study_name!r} in {tune['storage']} now has {facts['n_trials']} trials "
          f"({facts['n_complete']} complete, {facts['n_pruned']} pruned of which {facts['n_diverged']} diverged, "
          f"{facts['n_failed']} failed); this run took {time.perf_counter() - start:.0f}s; report: {TUNING_REPORT}")
    if best is not None:
        print(f"tune: best trial {study.best_trial.number}, val Jaccard {study.best_value:.4f}; "
              f"apply it with (also in {TUNING_BEST}):\n  {apply_command(best)}")
