"""The figures of the grid's reports (tables, resolution study), drawn from its run records and
checkpoints, and the colours every report gives a label map."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from unet_ssl.core import augment, checkpoint  # noqa: E402
from unet_ssl.core.inference import predict  # noqa: E402
from unet_ssl.core.runtime import make_runtime  # noqa: E402
from unet_ssl.data.prepared import load_tensors  # noqa: E402
from unet_ssl.data.splits import split_indices  # noqa: E402
from unet_ssl.experiments import grid_plan  # noqa: E402
from unet_ssl.paths import (  # noqa: E402
    GRID_FINETUNED_CHECKPOINT,
    GRID_PETS,
    GRID_PRETRAIN_RECORD,
    GRID_PRETRAINED,
    GRID_PRETRAINED_CHECKPOINT,
    MAE_FIGURE,
    RESOLUTION_PLOT,
    grid_pretraining,
)
from unet_ssl.render import percent  # noqa: E402

PALETTE = torch.tensor([[230, 90, 40], [40, 40, 40], [250, 220, 90]], dtype=torch.uint8)  # pet, background, border


def colourise(labels: torch.Tensor) -> np.ndarray:
    """Label maps (pet 0, background 1, border 2) as RGB images."""
    return PALETTE[labels.long()].numpy()


def save(fig: plt.Figure, path: Path) -> None:
    """Tight bounding box: a legend placed outside the axes is saved whole, however many rows it has."""
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def row_style(i: int) -> tuple[tuple, str]:
    """The i-th row's (or pretraining's) colour and line style: ten colours, then the same colours dashed, so no
    two look alike."""
    return plt.get_cmap("tab10").colors[i % 10], ("-", "--", ":")[i // 10 % 3]


def learning_curves(frame: pd.DataFrame, table: grid_plan.Table, path: Path) -> None:
    """Validation Jaccard per epoch (mean over seeds, band = min..max), one panel per column."""
    fig, axes = plt.subplots(1, len(table.columns), figsize=(5.5 * len(table.columns), 4.8), squeeze=False)
    handles = {}
    for col, (ax, title) in enumerate(zip(axes[0], table.columns)):
        for i, row in enumerate(table.rows):
            runs = frame[frame["cell"] == row.cells[col].name] if len(frame) else frame
            if runs.empty:
                continue
            curves = pd.DataFrame([[h.get("val_jaccard", math.nan) for h in hist] for hist in runs["history"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            colour, dashes = row_style(i)
            handles[row.label], = ax.plot(epochs, curves.mean(), marker=".", color=colour, linestyle=dashes)
            if len(runs) > 1:
                ax.fill_between(epochs, curves.min(), curves.max(), alpha=0.15, color=colour)
        ax.set(title=f"fine-tuning on {title} of the pets", xlabel="epoch", ylabel="validation Jaccard (dataset-level)")
    fig.tight_layout()
    # below the panels, one legend column per panel: a label is about as wide as one panel
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0),
               ncol=len(table.columns), fontsize=7)
    save(fig, path)


def pretraining_curves(frame: pd.DataFrame, path: Path) -> None:
    """Loss per epoch, a line per pretraining run, one colour and legend entry per pretraining (its seeds alike)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    folders = {grid_pretraining(r.pretrain_run, getattr(r, "pretrain_dir", None)) for r in frame.itertuples()}
    pretraining = {f: f.name.rsplit("-s", 1)[0] for f in folders}  # the run key without its seed
    pretrainings = sorted(set(pretraining.values()))
    handles = {}
    for folder in sorted(folders, key=lambda f: f.name):
        history = json.loads((folder / GRID_PRETRAIN_RECORD).read_text())["history"]
        if history:
            name = pretraining[folder]
            colour, dashes = row_style(pretrainings.index(name))
            line, = ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker=".", color=colour,
                            linestyle=dashes)
            handles.setdefault(name, line)
    ax.set(title="pretraining loss (NT-Xent for SimCLR, MSE for MAE)", xlabel="epoch", ylabel="loss", yscale="log")
    if handles:
        ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save(fig, path)


def subset_curves(points: dict[str, list[tuple[float, float, float]]], paper: dict[str, list[tuple[float, float]]],
                  path: Path) -> None:
    """Test Jaccard against fine-tuning subset size per variant: `points` (subset, mean, sd) of our runs,
    `paper` (subset, value) of the paper's, dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab10").colors
    for i, label in enumerate(points):
        if not points[label]:
            continue
        x, mean, sd = zip(*points[label])
        ax.errorbar(x, mean, yerr=[0 if math.isnan(s) else s for s in sd], marker="o", capsize=3, label=label,
                    color=colours[i % 10])
        if paper[label]:
            ax.plot(*zip(*paper[label]), linestyle="--", marker="x", color=colours[i % 10], alpha=0.6)
    ax.set(xscale="log", xlabel="fraction of the labelled pets used for fine-tuning",
           ylabel="test Jaccard (dataset-level)", title="Jaccard vs fine-tuning subset (dashed x: the paper's SimCLR)")
    ax.set_xticks(grid_plan.SUBSETS, [percent(s) for s in grid_plan.SUBSETS])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save(fig, path)


def examples(pets: dict, k: int) -> torch.Tensor:
    """k test pets spread evenly over the (name-sorted) test split, so every breed shows."""
    test = split_indices(pets["split"], "test")
    return test[torch.linspace(0, len(test) - 1, min(k, len(test))).round().long()]


def prediction_grid(params: dict, frame: pd.DataFrame, cells: list[grid_plan.Cell], path: Path) -> list[str]:
    """The first test pets: image, true mask, and the prediction of each cell's first-seed model. Returns the
    cells left out because that model's checkpoint (a DVC output, not in git) is not in this workspace."""
    pets = load_tensors(GRID_PETS)
    test_idx = examples(pets, params["grid"]["examples"])
    runtime = make_runtime(params["runtime"])
    columns = [("image", pets["images"][test_idx].permute(0, 2, 3, 1).numpy()),
               ("true mask", colourise(pets["masks"][test_idx]))]
    absent = []
    for cell in cells:
        runs = frame[frame["cell"] == cell.name].sort_values("seed") if len(frame) else frame
        if runs.empty:
            continue
        saved = Path(runs["path"].iloc[0]) / GRID_FINETUNED_CHECKPOINT
        if not saved.is_file():
            absent.append(cell.name)
            continue
        model = runtime.model(checkpoint.load_model(saved))
        pred = predict(model, pets["images"][test_idx], runtime, params["evaluate"]["batch_size"])
        name = textwrap.fill(cell.name, 30)  # long variant names wrap at their hyphens instead of overlapping
        columns.append((f"{name}\n(seed {int(runs['seed'].iloc[0])})", colourise(pred)))
    fig, axes = plt.subplots(len(test_idx), len(columns), figsize=(1.7 * len(columns), 1.8 * len(test_idx)),
                             squeeze=False)
    for c, (title, images) in enumerate(columns):
        for r in range(len(test_idx)):
            axes[r][c].imshow(images[r])
            axes[r][c].set_axis_off()
        axes[0][c].set_title(title, fontsize=6)
    fig.tight_layout()
    save(fig, path)
    return absent


def mae_figure(params: dict, path: Path = MAE_FIGURE) -> None:
    """The paper's Fig. 2 for our checkpoints: test pets (never seen in pretraining), the masked input
    and the reconstruction of each masked-autoencoder method (first seed)."""
    pets = load_tensors(GRID_PETS)
    images = augment.to_float(pets["images"][examples(pets, params["grid"]["examples"])])
    keys = {}
    for key, entry in sorted(params["plan"]["pretrain"].items(), key=lambda kv: kv[1]["seed"]):
        method = entry["pretrain"]["method"]
        if method.startswith("mae_") and (GRID_PRETRAINED / key / GRID_PRETRAINED_CHECKPOINT).is_file():
            keys.setdefault(method, key)
    rows = []
    for method, key in keys.items():
        cfg = params["plan"]["pretrain"][key]["pretrain"]
        size = cfg["image_size"]
        x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
        mask = augment.make_mask(method.removeprefix("mae_"), len(x), size, size, torch.Generator().manual_seed(0),
                                 cfg["mask_patch"], cfg["mask_ratio"])
        model = checkpoint.load_model(GRID_PRETRAINED / key / GRID_PRETRAINED_CHECKPOINT).eval()
        with torch.inference_mode():
            recon = model(x * (1 - mask)).clamp(0, 1)
        rows += [(f"{key}\noriginal", x), (f"{key}\nmasked ({percent(mask.mean())})", x * (1 - mask)),
                 (f"{key}\nreconstruction", recon)]
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, f"no masked-autoencoder checkpoint in the plan of {params['profile']}", ha="center",
                va="center")
        ax.set_axis_off()
    else:
        fig, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images) + 1.5, 1.6 * len(rows)),
                                 squeeze=False)
        for r, (label, batch) in enumerate(rows):
            for c in range(len(images)):
                axes[r][c].imshow(batch[c].permute(1, 2, 0).numpy())
                axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
            axes[r][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    save(fig, path)


def resolution_curve(scores: pd.DataFrame, cells: list[str], trained: int, path: Path = RESOLUTION_PLOT) -> None:
    """Mean test Jaccard of each cell against the test image size, the training size marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell in cells:
        mean = scores[scores["cell"] == cell].groupby("size")["jaccard"].mean()
        ax.plot(mean.index, mean.values, marker="o", label=cell)
    ax.axvline(trained, color="grey", linestyle=":", label=f"training size ({trained} px)")
    ax.set(xlabel="test image size (px)", ylabel="test Jaccard (dataset-level)", title="Resolution invariance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
