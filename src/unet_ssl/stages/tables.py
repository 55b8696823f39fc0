"""Stages `table1`, `table2` and `resolution` of grid/dvc.yaml: markdown tables and figures in
reports/, generated from the grid's run records (grid/runs/**/result.json), its checkpoints and its
data; the only numbers not computed from runs are the paper's, quoted from `unet_ssl.experiments.grid_plan`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from unet_ssl.core import augment, checkpoint  # noqa: E402
from unet_ssl.core.inference import (
    evaluate_model,  # noqa: E402
    predict,  # noqa: E402
)
from unet_ssl.core.resize import resize_image, resize_mask  # noqa: E402
from unet_ssl.core.runtime import make_runtime  # noqa: E402
from unet_ssl.core.stats import PerImage, confusion_from_record, paired_text  # noqa: E402
from unet_ssl.data.images import decode_rgb, decode_trimap, trimap_to_classes  # noqa: E402
from unet_ssl.data.prepared import load_tensors  # noqa: E402
from unet_ssl.data.splits import split_indices  # noqa: E402
from unet_ssl.experiments import grid_plan  # noqa: E402
from unet_ssl.paths import REPORTS  # noqa: E402
from unet_ssl.stages.grid import PETS, PRETRAINED, check_plan, results  # noqa: E402
from unet_ssl.stages.report import colourise  # noqa: E402
from unet_ssl.tracking.mlflow_runs import stage_run  # noqa: E402

METRICS = {  # column -> (label, path in a result's "test" scores)
    "f1": ("F1", ("f1",)),
    "jaccard": ("Jaccard", ("jaccard",)),
    "paper_f1": ("F1", ("paper_style", "f1")),
    "paper_jaccard": ("Jaccard", ("paper_style", "jaccard")),
    "border_jaccard": ("border Jaccard", ("per_class", "jaccard", "border")),
}
MAE_FIGURE = REPORTS / "mae_reconstructions.png"
RESOLUTION_REPORT = REPORTS / "resolution.md"
RESOLUTION_PLOT = REPORTS / "resolution.png"
RESOLUTION_SCORES = Path("grid") / "resolution.json"
SCRATCH = "none-trained"  # cell names of the from-scratch baseline start with this
RESAMPLES = 2000  # bootstrap resamples of a paired comparison
PAIRED = ("paired by seed (the seeds both cells ran): mean difference with a 95% bootstrap interval over "
          f"seeds and test images ({RESAMPLES} resamples); 'better'/'worse' only where the interval excludes zero, "
          "else 'within noise'.")


def figures_dir(table: grid_plan.Table) -> Path:
    return REPORTS / f"{table.name}_figures"


def _get(scores: dict, path: tuple[str, ...]) -> float:
    for key in path:
        scores = scores[key]
    return float("nan") if scores is None else float(scores)


def metric_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The run records with one column per metric of METRICS."""
    out = frame.copy()
    for column, (_, path) in METRICS.items():
        out[column] = [_get(t, path) for t in frame["test"]]
    return out


def stats(frame: pd.DataFrame, cell: grid_plan.Cell, column: str) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one seed) and number of seeds of a cell's metric."""
    values = frame.loc[frame["cell"] == cell.name, column].dropna() if len(frame) else pd.Series(dtype=float)
    if values.empty:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "not run"
    return f"{mean:.3f}" if n == 1 or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def paper(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def seed_runs(frame: pd.DataFrame, cell: grid_plan.Cell) -> dict[int, pd.Series]:
    """A cell's run records by seed."""
    runs = frame[frame["cell"] == cell.name] if len(frame) else frame
    return {int(r["seed"]): r for _, r in runs.iterrows()}


def per_image(record: pd.Series) -> PerImage | None:
    """(test indices, per-image confusion matrices) of a run, None where its record predates them."""
    saved = record.get("test_confusion")
    return confusion_from_record(saved) if isinstance(saved, dict) else None


def difference(frame: pd.DataFrame, cell: grid_plan.Cell, baseline: grid_plan.Cell) -> str:
    """Dataset-level Jaccard of `cell` minus `baseline`, paired by seed (the seeds both ran): the mean
    difference with a bootstrap interval over seeds and test images, and a verdict only where the
    interval excludes zero."""
    a, b = seed_runs(frame, baseline), seed_runs(frame, cell)
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return "—"
    plain = float(np.mean([b[s]["jaccard"] - a[s]["jaccard"] for s in seeds]))
    return paired_text([per_image(a[s]) for s in seeds], [per_image(b[s]) for s in seeds], plain, RESAMPLES)


def scratch_baseline(cell: grid_plan.Cell) -> grid_plan.Cell:
    """The from-scratch run a cell is judged against: no pretraining, encoder trained, same skips and subset."""
    return grid_plan.Cell("none", freeze_encoder=False, skip_connections=cell.skip_connections, subset=cell.subset)


def data_statement(params: dict, prepared: Path = PETS.parent.parent) -> list[str]:
    """What the runs saw, from the manifests in `prepared` (pets/ and pretrain/)."""
    pets = pd.read_csv(prepared / "pets" / "pets_manifest.csv")
    photos = pd.read_csv(prepared / "pretrain" / "pretrain_manifest.csv")
    breeds = sorted({name.rsplit("_", 1)[0] for name in pets["name"]})
    counts = pets["split"].value_counts()
    d = params["data"]
    return [
        f"- Data: {len(pets)} labelled pets of {len(breeds)} breeds ({', '.join(breeds)}) from `{d['raw_dir']}`, split "
        f"{counts.get('train', 0)} train / {counts.get('val', 0)} validation / {counts.get('test', 0)} test "
        f"(split `{d['split']}`, seed {d['split_seed']}); the full Oxford-IIIT Pet set has 7,390 pets of 37 breeds.",
        f"- Pretraining photos: {len(photos)} of {photos['wnid'].nunique()} classes at {d['pretrain_image_size']} px"
        f"{' (dogs and cats left out)' if d.get('exclude_pets') else ''}"
        f"{' (prepared, not used: pretraining method none)' if params['pretrain']['method'] == 'none' else ''}"
        "; the paper used 350,000 iNaturalist photos.",
    ]


def profile_statement(params: dict, frame: pd.DataFrame) -> list[str]:
    ft, pre = params["finetune"], params["pretrain"]
    overrides = params["grid"].get("pretrain_overrides") or {}
    over = "; ".join(f"{m}: {', '.join(f'{k} {v}' for k, v in o.items())}" for m, o in overrides.items())
    devices = ", ".join(sorted(set(frame["device"]))) if len(frame) else "—"
    n_test = int(frame["test"].iloc[0]["n_images"]) if len(frame) else 0
    batch = params["evaluate"]["paper_batch_size"]
    one_batch = (f" With {n_test} test pets in one batch of {batch}, the two views coincide here (the paper had about "
                 "740 test pets, 3 batches).") if 0 < n_test <= batch else ""
    return [
        f"- Profile: `{params['profile']}` (grid/params.yaml), seeds {params['grid']['seeds']}, run on {devices}.",
        f"- Pretraining: epochs {pre['epochs']}, batch {pre['batch_size']}, lr {pre['lr']}, {pre['image_size']} px, "
        f"temperature {pre['temperature']}, masks {pre['mask_ratio']:.0%} in {pre['mask_patch']}-px patches, "
        f"loss over {'the masked pixels' if pre['masked_only_loss'] else 'the whole image'}"
        f"{f'; per method: {over}' if over else ''}.",
        f"- Fine-tuning: epochs {ft['epochs']}, batch {ft['batch_size']}, lr {ft['lr']}, {ft['image_size']} px, "
        f"augmentation `{ft['augment']}`, Dice loss, "
        f"{'weights of the best validation epoch' if ft['select_best'] else 'last-epoch weights'}; test scores on the "
        "fixed test split, never used to choose anything.",
        "- Metrics: dataset-level (one confusion matrix over the test split; primary) and paper-style (per batch of "
        f"{batch}, mean over the classes present, then over batches).{one_batch}",
    ]


def timing_statement(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "- Time: no runs yet."
    pre = {}
    for record in frame.itertuples():
        path = PRETRAINED / record.pretrain_run / "pretrain.json"
        if path.is_file():
            pre[record.pretrain_run] = json.loads(path.read_text())
    compute = frame["seconds"].sum() + sum(p["seconds"] for p in pre.values())
    starts = [*frame["started"], *(p["started"] for p in pre.values())]
    ends = [*frame["finished"], *(p["finished"] for p in pre.values())]
    span = (pd.Timestamp(max(ends)) - pd.Timestamp(min(starts))).total_seconds()
    return (f"- Time: {len(frame)} fine-tuning runs ({frame['seconds'].sum() / 60:.1f} min) and {len(pre)} pretraining runs "
            f"({sum(p['seconds'] for p in pre.values()) / 60:.1f} min): {compute / 60:.1f} min of compute; "
            f"{span / 60:.1f} min from the first start to the last finish.")


def diagnostics(frame: pd.DataFrame, cells: list[grid_plan.Cell]) -> list[str]:
    """Per cell: training set size, selected epoch, best and last validation Jaccard and the
    epoch-to-epoch swing of validation Jaccard over the second half of training."""
    lines = ["| cell | seeds | training pets | selected epoch | best val Jaccard | last-epoch val Jaccard | "
             "val swing (2nd half) | seconds per run |", "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        runs = frame[frame["cell"] == cell.name] if len(frame) else frame
        if runs.empty:
            lines.append(f"| {cell.name} | 0 | | | | | | |")
            continue
        best, last, swing = [], [], []
        for history in runs["history"]:
            val = [h.get("val_jaccard", math.nan) for h in history]
            best.append(max(val))
            last.append(val[-1])
            tail = val[len(val) // 2:]
            swing.append(float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else math.nan)
        swings = [s for s in swing if not math.isnan(s)]
        lines.append(f"| {cell.name} | {len(runs)} | {int(runs['n_train'].iloc[0])} | {runs['selected_epoch'].mean():.1f} | "
                     f"{np.mean(best):.3f} | {np.mean(last):.3f} | {f'{np.mean(swings):.3f}' if swings else '—'} | "
                     f"{runs['seconds'].mean():.0f} |")
    return lines


def learning_curves(frame: pd.DataFrame, table: grid_plan.Table, path: Path) -> None:
    """Validation Jaccard per epoch (mean over seeds, band = min..max), one panel per column."""
    fig, axes = plt.subplots(1, len(table.columns), figsize=(5.5 * len(table.columns), 4.8), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    handles = {}
    for col, (ax, title) in enumerate(zip(axes[0], table.columns)):
        for i, row in enumerate(table.rows):
            runs = frame[frame["cell"] == row.cells[col].name] if len(frame) else frame
            if runs.empty:
                continue
            curves = pd.DataFrame([[h.get("val_jaccard", math.nan) for h in hist] for hist in runs["history"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            handles[row.label], = ax.plot(epochs, curves.mean(), marker=".", color=colours[i % 10])
            if len(runs) > 1:
                ax.fill_between(epochs, curves.min(), curves.max(), alpha=0.15, color=colours[i % 10])
        ax.set(title=f"fine-tuning on {title} of the pets", xlabel="epoch", ylabel="validation Jaccard (dataset-level)")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, max(1, len(handles))), fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pretraining_curves(frame: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted(set(frame["pretrain_run"])) if len(frame) else []:
        record = json.loads((PRETRAINED / key / "pretrain.json").read_text())
        if record["history"]:
            ax.plot([h["epoch"] for h in record["history"]], [h["loss"] for h in record["history"]], marker=".", label=key)
    ax.set(title="pretraining loss (NT-Xent for SimCLR, MSE for MAE)", xlabel="epoch", ylabel="loss", yscale="log")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def subset_curves(frame: pd.DataFrame, table: grid_plan.Table, path: Path) -> None:
    """Dataset-level test Jaccard against fine-tuning subset size per variant; the paper's values dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab10").colors
    for i, row in enumerate(table.rows):
        points = [(cell.subset, *stats(frame, cell, "jaccard")) for cell in row.cells]
        points = [p for p in points if p[3]]
        if not points:
            continue
        x, mean, std, _ = zip(*points)
        ax.errorbar(x, mean, yerr=[0 if math.isnan(s) else s for s in std], marker="o", capsize=3, label=row.label,
                    color=colours[i % 10])
        theirs = [(c.subset, grid_plan.paper_value(table, c)[1]) for c in row.cells if grid_plan.paper_value(table, c)[1] is not None]
        if theirs:
            ax.plot(*zip(*theirs), linestyle="--", marker="x", color=colours[i % 10], alpha=0.6)
    ax.set(xscale="log", xlabel="fraction of the labelled pets used for fine-tuning",
           ylabel="test Jaccard (dataset-level)", title="Jaccard vs fine-tuning subset (dashed x: the paper's SimCLR)")
    ax.set_xticks(grid_plan.SUBSETS, [f"{s:.0%}" for s in grid_plan.SUBSETS])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def examples(pets: dict, k: int) -> torch.Tensor:
    """k test pets spread evenly over the (name-sorted) test split, so every breed shows."""
    test = split_indices(pets["split"], "test")
    return test[torch.linspace(0, len(test) - 1, min(k, len(test))).round().long()]


def prediction_grid(params: dict, frame: pd.DataFrame, cells: list[grid_plan.Cell], path: Path) -> None:
    """The first test pets: image, true mask, and the prediction of each cell's first-seed model."""
    pets = load_tensors(PETS)
    test_idx = examples(pets, params["grid"]["examples"])
    runtime = make_runtime(params["runtime"])
    columns = [("image", pets["images"][test_idx].permute(0, 2, 3, 1).numpy()), ("true mask", colourise(pets["masks"][test_idx]))]
    for cell in cells:
        runs = frame[frame["cell"] == cell.name].sort_values("seed") if len(frame) else frame
        if runs.empty:
            continue
        model = runtime.model(checkpoint.load_model(Path(runs["path"].iloc[0]) / "finetuned.pt"))
        pred = predict(model, pets["images"][test_idx], runtime, params["evaluate"]["batch_size"])
        columns.append((f"{cell.name}\n(seed {int(runs['seed'].iloc[0])})", colourise(pred)))
    fig, axes = plt.subplots(len(test_idx), len(columns), figsize=(1.7 * len(columns), 1.8 * len(test_idx)), squeeze=False)
    for c, (title, images) in enumerate(columns):
        for r in range(len(test_idx)):
            axes[r][c].imshow(images[r])
            axes[r][c].set_axis_off()
        axes[0][c].set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def mae_figure(params: dict, path: Path = MAE_FIGURE) -> None:
    """The paper's Fig. 2 for our checkpoints: test pets (never seen in pretraining), the masked input
    and the reconstruction of each masked-autoencoder method (first seed)."""
    pets = load_tensors(PETS)
    images = augment.to_float(pets["images"][examples(pets, params["grid"]["examples"])])
    keys = {}
    for key, entry in sorted(params["plan"]["pretrain"].items(), key=lambda kv: kv[1]["seed"]):
        method = entry["pretrain"]["method"]
        if method.startswith("mae_") and (PRETRAINED / key / "pretrained.pt").is_file():
            keys.setdefault(method, key)
    rows = []
    for method, key in keys.items():
        cfg = params["plan"]["pretrain"][key]["pretrain"]
        size = cfg["image_size"]
        x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mask = augment.make_mask(method.removeprefix("mae_"), len(x), size, size, torch.Generator().manual_seed(0),
                                 cfg["mask_patch"], cfg["mask_ratio"])
        model = checkpoint.load_model(PRETRAINED / key / "pretrained.pt").eval()
        with torch.inference_mode():
            recon = model(x * (1 - mask)).clamp(0, 1)
        rows += [(f"{key}\noriginal", x), (f"{key}\nmasked ({mask.mean():.0%})", x * (1 - mask)), (f"{key}\nreconstruction", recon)]
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, f"no masked-autoencoder checkpoint in the plan of {params['profile']}", ha="center", va="center")
        ax.set_axis_off()
    else:
        fig, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images) + 1.5, 1.6 * len(rows)), squeeze=False)
        for r, (label, batch) in enumerate(rows):
            for c in range(len(images)):
                axes[r][c].imshow(batch[c].permute(1, 2, 0).numpy())
                axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
            axes[r][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def header(table: grid_plan.Table, params: dict, frame: pd.DataFrame) -> list[str]:
    return [f"# {table.title}", "",
            f"Generated by `dvc repro grid/dvc.yaml:{table.name}` (`unet-ssl grid table {table.name}`) from the run records in "
            "grid/runs/ (one fine-tuning run per cell and seed, each in MLflow under stage `grid_finetune` with tags "
            "method, freeze_encoder, skip_connections, subset, seed). Mean ± sample standard deviation over seeds; "
            f"the paper's values are quoted from {grid_plan.PAPER_CITATION}.", "",
            *data_statement(params), *profile_statement(params, frame), timing_statement(frame), ""]


def table1_lines(frame: pd.DataFrame) -> list[str]:
    table = grid_plan.TABLE1
    scratch = grid_plan.Cell("none", freeze_encoder=False)
    lines = ["## Scores", "",
             "| pretraining | seeds | F1 (dataset-level) | Jaccard (dataset-level) | F1 (paper-style) | Jaccard (paper-style) "
             "| paper F1 | paper Jaccard | border Jaccard | Jaccard vs from scratch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.rows:
        cell = row.cells[0]
        n = stats(frame, cell, "jaccard")[2]
        theirs = grid_plan.paper_value(table, cell)
        lines.append(f"| {row.label} | {n} | " + " | ".join(fmt(*stats(frame, cell, c)) for c in ("f1", "jaccard", "paper_f1", "paper_jaccard"))
                     + f" | {paper(theirs[0])} | {paper(theirs[1])} | {fmt(*stats(frame, cell, 'border_jaccard'))} | "
                     + ("baseline" if cell == scratch else difference(frame, cell, scratch)) + " |")
    return lines + ["", "Jaccard vs from scratch: difference of dataset-level Jaccard to the U-Net trained from scratch "
                        f"(no pretraining, encoder trained, skips), {PAIRED}", ""]


def table2_lines(frame: pd.DataFrame) -> list[str]:
    table = grid_plan.TABLE2
    lines = []
    for column, title in (("jaccard", "Dataset-level Jaccard (primary)"), ("paper_jaccard", "Paper-style Jaccard")):
        lines += [f"## {title}", "", "| variant | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
        for row in table.rows:
            cells = []
            for cell in row.cells:
                theirs = grid_plan.paper_value(table, cell)[1]
                cells.append(fmt(*stats(frame, cell, column)) + ("" if theirs is None else f" (paper {theirs:.3f})"))
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Against training from scratch", "",
              "Dataset-level Jaccard minus that of the U-Net trained from scratch with the same skips and subset, "
              f"{PAIRED}", "",
              "| variant | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        lines.append(f"| {row.label} | " + " | ".join(
            "baseline" if cell == scratch_baseline(cell) else difference(frame, cell, scratch_baseline(cell)) for cell in row.cells) + " |")
    lines += ["", "## More data, better scores? (the paper's suspected anomaly)", "",
              "The paper's frozen-encoder, no-skip SimCLR U-Net scored 0.469 on 90% of the pets but 0.650 on 10%, the "
              "only row where more data scored lower. Our runs, dataset-level Jaccard at 90% minus at 10%, "
              f"{PAIRED}", "",
              "| variant | 90% − 10% | paper |", "|---|---|---|"]
    for row in table.rows:
        full, tenth = row.cells[0], row.cells[1]
        theirs = [grid_plan.paper_value(table, c)[1] for c in (full, tenth)]
        lines.append(f"| {row.label} | {difference(frame, full, tenth)} | "
                     + ("—" if None in theirs else f"{theirs[0] - theirs[1]:+.3f}") + " |")
    lines += ["", "One run per cell, as the paper reports, compares one seed with one seed. Of the single-seed "
                  "pairings (each 90% run against each 10% run of the same variant), the share in which 10% scored higher:", "",
              "| variant | 10% above 90% | largest 10% seed range |", "|---|---|---|"]
    for row in table.rows:
        full, tenth = (frame.loc[frame["cell"] == c.name, "jaccard"].dropna() if len(frame) else pd.Series(dtype=float)
                       for c in row.cells[:2])
        pairs = [(a, b) for a in full for b in tenth]
        inverted = f"{sum(b > a for a, b in pairs)} of {len(pairs)}" if pairs else "—"
        spread = f"{tenth.max() - tenth.min():.3f}" if len(tenth) > 1 else "—"
        lines.append(f"| {row.label} | {inverted} | {spread} |")
    return lines + [""]


def run_table(params: dict, name: str) -> None:
    check_plan(params)
    table = grid_plan.TABLES[name]
    cells = table.cells
    frame = results(params, cells)
    frame = metric_frame(frame) if len(frame) else frame
    figures = figures_dir(table)
    figures.mkdir(parents=True, exist_ok=True)
    with stage_run(f"grid_{name}", {k: params[k] for k in ("profile", "grid", "data", "pretrain", "finetune")}) as run:
        lines = header(table, params, frame)
        lines += table1_lines(frame) if name == "table1" else table2_lines(frame)
        learning_curves(frame, table, figures / "learning_curves.png")
        pretraining_curves(frame, figures / "pretraining_loss.png")
        shown = [row.cells[0] for row in table.rows]  # the 90% column
        prediction_grid(params, frame, shown, figures / "predictions.png")
        lines += ["## Figures", "", f"![validation Jaccard per epoch]({figures.name}/learning_curves.png)", "",
                  f"![pretraining loss]({figures.name}/pretraining_loss.png)", "",
                  f"![example test predictions at 90%]({figures.name}/predictions.png)", ""]
        if name == "table2":
            subset_curves(frame, table, figures / "jaccard_vs_subset.png")
            lines += [f"![Jaccard vs subset size]({figures.name}/jaccard_vs_subset.png)", ""]
        else:
            mae_figure(params)
            lines += [f"![MAE reconstructions]({MAE_FIGURE.name})", ""]
        lines += ["## Runs", "", *diagnostics(frame, cells), "",
                  "Every run: `grid/runs/<table or shared>/<cell>/s<seed>/result.json` (scores, history, MLflow run id).", ""]
        report = REPORTS / f"{name}.md"
        report.write_text("\n".join(lines))
        run.log_artifact(report, "report")
        run.log_metrics({"runs": len(frame)})
    print(f"grid table {name}: {len(frame)} runs of {len(cells)} cells -> {report}")


def test_pets_at(raw_dir: Path, manifest: pd.DataFrame, sizes: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The test pets decoded once from the raw files and resized to each size (images bilinear,
    label maps nearest-neighbour), so a larger size carries real detail, not an upsampled copy."""
    test = manifest[manifest["split"] == "test"]
    decoded = [(decode_rgb(raw_dir / r.image_file).pixels, trimap_to_classes(decode_trimap(raw_dir / r.mask_file)))
               for r in test.itertuples()]
    return {s: (torch.stack([resize_image(x, s) for x, _ in decoded]), torch.stack([resize_mask(y, s) for _, y in decoded]))
            for s in sizes}


def run_resolution(params: dict) -> None:
    """Every 90% run of either table scored at each of `grid.resolutions`."""
    check_plan(params)
    sizes = params["grid"]["resolutions"]
    bad = [s for s in sizes if s % 8]
    if bad:
        raise ValueError(f"grid.resolutions {bad}: the U-Net needs sizes divisible by 8")
    frame = results(params)
    frame = frame[frame["subset"] == 0.9] if len(frame) else frame
    manifest = pd.read_csv(PETS.parent / "pets_manifest.csv")
    test_sets = test_pets_at(Path(params["data"]["raw_dir"]), manifest, sizes)
    runtime = make_runtime(params["runtime"])
    ev = params["evaluate"]
    rows = []
    with stage_run("grid_resolution", {k: params[k] for k in ("profile", "grid", "data", "finetune")}) as run:
        for record in frame.itertuples():
            model = runtime.model(checkpoint.load_model(Path(record.path) / "finetuned.pt"))
            for size, (images, masks) in test_sets.items():
                scores, _ = evaluate_model(model, images, masks, runtime, ev["batch_size"], ev["paper_batch_size"])
                rows.append({"cell": record.cell, "seed": record.seed, "size": size, "jaccard": scores["jaccard"],
                             "paper_jaccard": scores["paper_style"]["jaccard"], "f1": scores["f1"]})
        scores = pd.DataFrame(rows, columns=["cell", "seed", "size", "jaccard", "paper_jaccard", "f1"])
        nested: dict = {}
        for r in rows:  # cell -> seed -> size -> scores: the nesting `dvc metrics show` reads
            nested.setdefault(r["cell"], {}).setdefault(f"s{r['seed']}", {})[f"{r['size']}px"] = {
                k: r[k] for k in ("jaccard", "paper_jaccard", "f1")}
        RESOLUTION_SCORES.write_text(json.dumps(nested, indent=1))
        trained = params["finetune"]["image_size"]
        order = [c.name for t in grid_plan.TABLES.values() for c in t.cells if c.subset == 0.9]
        cells = sorted(set(scores["cell"]), key=order.index)
        lines = ["# Resolution invariance", "",
                 f"Generated by `dvc repro grid/dvc.yaml:resolution` (`unet-ssl grid resolution`): every fine-tuned model of "
                 f"the grid trained on 90% of the pets (at {trained} px) scored on the test pets decoded from the raw files at "
                 f"each size. Dataset-level Jaccard, mean ± std over seeds; paper-style Jaccard in the second table.", "",
                 *data_statement(params), f"- Profile: `{params['profile']}`, seeds {params['grid']['seeds']}.", ""]
        for column, title in (("jaccard", "Dataset-level Jaccard"), ("paper_jaccard", "Paper-style Jaccard")):
            lines += [f"## {title}", "", "| cell | " + " | ".join(f"{s} px{' (trained)' if s == trained else ''}" for s in sizes) + " |",
                      "|---|" + "---|" * len(sizes)]
            for cell in cells:
                by_size = scores[scores["cell"] == cell].groupby("size")[column]
                mean, std, n = by_size.mean(), by_size.std(ddof=1), by_size.count()
                lines.append(f"| {cell} | " + " | ".join(fmt(mean[s], std.get(s, math.nan), int(n[s])) for s in sizes) + " |")
            lines.append("")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for cell in cells:
            mean = scores[scores["cell"] == cell].groupby("size")["jaccard"].mean()
            ax.plot(mean.index, mean.values, marker="o", label=cell)
        ax.axvline(trained, color="grey", linestyle=":", label=f"training size ({trained} px)")
        ax.set(xlabel="test image size (px)", ylabel="test Jaccard (dataset-level)", title="Resolution invariance")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESOLUTION_PLOT, dpi=90)
        plt.close(fig)
        lines += [f"![Jaccard vs test resolution]({RESOLUTION_PLOT.name})", ""]
        RESOLUTION_REPORT.write_text("\n".join(lines))
        run.log_artifact(RESOLUTION_REPORT, "report")
    print(f"grid resolution: {len(frame)} models x {len(sizes)} sizes -> {RESOLUTION_REPORT}")
