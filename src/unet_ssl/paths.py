"""Paths and file names of the pipeline's files, shared by every layer and mirrored in dvc.yaml."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout this package is installed from (editable install)
REPO_SAMPLE = REPO / "sample"  # the embedded sample, wherever the command runs
RAW = Path("data/raw")
SAMPLE = Path("sample")
PROFILES = Path("profiles")

# A prepared-data folder (data/prepared, grid/data): its pets/ and pretrain/ folders and the files prepare writes there
PETS_FOLDER = "pets"
PETS_TENSORS = "pets.pt"
PETS_MANIFEST = "pets_manifest.csv"
PETS_INPUT_REPORT = "input_report.csv"
PRETRAIN_FOLDER = "pretrain"
PRETRAIN_TENSORS = "pretrain.pt"
PRETRAIN_MANIFEST = "pretrain_manifest.csv"
PRETRAIN_INPUT_REPORT = "pretrain_input_report.csv"

# The main pipeline (dvc.yaml)
PREPARED = Path("data/prepared")
PETS = PREPARED / PETS_FOLDER / PETS_TENSORS
PRETRAIN_IMAGES = PREPARED / PRETRAIN_FOLDER / PRETRAIN_TENSORS
PRETRAINED = Path("checkpoints/pretrained.pt")
FINETUNED = Path("checkpoints/finetuned.pt")
RESUME = Path("checkpoints/resume")
PRETRAIN_RESUME = RESUME / "pretrain.pt"
FINETUNE_RESUME = RESUME / "finetune.pt"
METRICS = Path("metrics")
TEST_SCORES = METRICS / "evaluate.json"
PRETRAIN_HISTORY = METRICS / "pretrain_history.csv"
FINETUNE_HISTORY = METRICS / "finetune_history.csv"
PREDICTIONS = Path("outputs/predictions.pt")
CONFUSION_ARTIFACT = "test_confusion.json"  # MLflow artifact of an evaluate run: its `confusion_record`

# Figure names, shared by the pipeline report's and the grid tables' figure folders
LEARNING_CURVES_FIGURE = "learning_curves.png"
PREDICTIONS_FIGURE = "predictions.png"
PRETRAINING_LOSS_FIGURE = "pretraining_loss.png"
SUBSET_FIGURE = "jaccard_vs_subset.png"

# Reports, all generated
REPORTS = Path("reports")
PIPELINE_REPORT = REPORTS / "pipeline.md"
PIPELINE_FIGURES = REPORTS / "figures"
PIPELINE_CURVES = PIPELINE_FIGURES / LEARNING_CURVES_FIGURE
PIPELINE_EXAMPLES = PIPELINE_FIGURES / PREDICTIONS_FIGURE
VALIDATION_REPORT = REPORTS / "data_validation.md"
TUNING_REPORT = REPORTS / "tuning.md"
TUNING_TEST_REPORT = REPORTS / "tuning_test.md"
TUNING_BEST = REPORTS / "tuning_best.yaml"
TUNING_FIGURES = REPORTS / "tuning_figures"
TUNING_HISTORY_PLOT = "history.png"  # Optuna's plots, inside the tuning figures folder
TUNING_INTERMEDIATE_PLOT = "intermediate.png"
TUNING_IMPORTANCES_PLOT = "importances.png"
MAE_FIGURE = REPORTS / "mae_reconstructions.png"
RESOLUTION_REPORT = REPORTS / "resolution.md"
RESOLUTION_PLOT = REPORTS / "resolution.png"

# The paper's grid (grid/dvc.yaml): its own data, checkpoints and run records under grid/
GRID = Path("grid")
# JSON, not YAML: DVC reads this generated file once per grid stage (160 of them) on every `dvc status`, and
# parses JSON with the standard library, YAML with ruamel (root `dvc status` 20 s with it as YAML, 5 s as JSON)
GRID_PARAMS = GRID / "params.json"
GRID_DATA = GRID / "data"
GRID_PETS = GRID_DATA / PETS_FOLDER / PETS_TENSORS
GRID_PRETRAIN_IMAGES = GRID_DATA / PRETRAIN_FOLDER / PRETRAIN_TENSORS
GRID_VALIDATION = GRID_DATA / "validation.md"
GRID_PRETRAINED = GRID / "pretrain"
GRID_PRETRAIN_VARIANTS = GRID / "pretrain_variants"  # the levers table's variants, apart so Tables 1-2 need none
GRID_RUNS = GRID / "runs"
GRID_RESUME = GRID / "resume"
GRID_RESOLUTION_SCORES = GRID / "resolution.json"

# A grid run's folder (GRID_PRETRAINED/<run>, GRID_RUNS/.../<run>): its checkpoint and JSON record
GRID_PRETRAINED_CHECKPOINT = "pretrained.pt"
GRID_PRETRAIN_RECORD = "pretrain.json"
GRID_FINETUNED_CHECKPOINT = "finetuned.pt"
GRID_RESULT = "result.json"

# A release folder (`unet-ssl release --out`): the published checkpoint and its model card
RELEASE_CHECKPOINT = "pets-unet.pt"
RELEASE_CARD = "README.md"


def grid_pretraining(pretrain_run: str, pretrain_dir: object = None) -> Path:
    """The folder of a fine-tuning run's pretraining: the `pretrain_dir` its record names, or for records
    made before pretraining variants existed (no such field, or NaN in a frame) grid/pretrain/<run>."""
    return Path(pretrain_dir) if isinstance(pretrain_dir, str) else GRID_PRETRAINED / pretrain_run


def grid_resume(stage: str, run: str) -> Path:
    """The resume checkpoint of a grid run in progress (stage: pretrain or finetune)."""
    return GRID_RESUME / f"{stage}-{run}.pt"


def tuning_contour_plot(x: str, y: str) -> str:
    """File name of Optuna's contour plot of parameters x and y (dots would read as suffixes)."""
    return f"contour_{x}_{y}".replace(".", "_") + ".png"


def table_report(name: str) -> Path:
    """reports/<table>.md of a grid table (table1, table2, levers)."""
    return REPORTS / f"{name}.md"


def table_figures(name: str) -> Path:
    """The folder of a grid table's figures, beside its report."""
    return REPORTS / f"{name}_figures"
