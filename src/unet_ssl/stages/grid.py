"""`unet-ssl grid use|plan|prepare|pretrain|finetune`: the grid's params file and the run stages of
grid/dvc.yaml, each reading grid/params.json; the runs are in `unet_ssl.experiments.grid_runs`."""
from __future__ import annotations

from pathlib import Path

from unet_ssl.config import load_params
from unet_ssl.experiments import grid_runs
from unet_ssl.paths import GRID_PARAMS


def use(profile: Path) -> None:
    params = grid_runs.use_profile(profile)
    print(f"wrote {GRID_PARAMS}: {grid_runs.summary(params)}")


def plan() -> None:
    params = load_params(GRID_PARAMS)
    grid_runs.check_plan(params)
    print(grid_runs.summary(params))


def prepare() -> None:
    grid_runs.prepare(load_params(GRID_PARAMS))


def pretrain(key: str) -> None:
    grid_runs.pretrain_run(load_params(GRID_PARAMS), key)


def finetune(key: str) -> None:
    grid_runs.finetune_run(load_params(GRID_PARAMS), key)
