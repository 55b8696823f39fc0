"""Paths and file names of the pipeline's files, shared by every layer and mirrored in dvc.yaml."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout this package is installed from (editable install)
REPO_SAMPLE = REPO / "sample"  # the embedded sample, wherever the command runs
RAW = Path("data/raw")
SAMPLE = Path("sample")
PROFILES = Path("profiles")

# The main pipeline (dvc.yaml)
PREPARED = Path("data/prepared")
PETS = PREPARED / "pets" / "pets.pt"
PRETRAIN_IMAGES = PREPARED / "pretrain" / "pretrain.pt"
PRETRAINED = Path("checkpoints/pretrained.pt")
FINETUNED = Path("checkpoints/finetuned.pt")
RESUME = Path("checkpoints/resume")
METRICS = Path("metrics")
TEST_SCORES = METRICS / "evaluate.json"
PRETRAIN_HISTORY = METRICS / "pretrain_history.csv"
FINETUNE_HISTORY = METRICS / "finetune_history.csv"
PREDICTIONS = Path("outputs/predictions.pt")

# Reports, all generated
REPORTS = Path("reports")
PIPELINE_REPORT = REPORTS / "pipeline.md"
PIPELINE_FIGURES = REPORTS / "figures"
VALIDATION_REPORT = REPORTS / "data_validation.md"
TUNING_REPORT = REPORTS / "tuning.md"
TUNING_TEST_REPORT = REPORTS / "tuning_test.md"
TUNING_BEST = REPORTS / "tuning_best.yaml"
TUNING_FIGURES = REPORTS / "tuning_figures"
MAE_FIGURE = REPORTS / "mae_reconstructions.png"
RESOLUTION_REPORT = REPORTS / "resolution.md"
RESOLUTION_PLOT = REPORTS / "resolution.png"

# The paper's grid (grid/dvc.yaml): its own data, checkpoints and run records under grid/
GRID = Path("grid")
GRID_PARAMS = GRID / "params.yaml"
GRID_DATA = GRID / "data"
GRID_PETS = GRID_DATA / "pets" / "pets.pt"
GRID_PRETRAIN_IMAGES = GRID_DATA / "pretrain" / "pretrain.pt"
GRID_VALIDATION = GRID_DATA / "validation.md"
GRID_PRETRAINED = GRID / "pretrain"
GRID_RUNS = GRID / "runs"
GRID_RESUME = GRID / "resume"
GRID_RESOLUTION_SCORES = GRID / "resolution.json"


def table_report(name: str) -> Path:
    """reports/<table>.md of a grid table (table1, table2)."""
    return REPORTS / f"{name}.md"


def table_figures(name: str) -> Path:
    """The folder of a grid table's figures, beside its report."""
    return REPORTS / f"{name}_figures"
