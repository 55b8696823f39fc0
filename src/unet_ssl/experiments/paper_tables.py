"""The paper's Table 1 and Table 2, and our levers table, from the grid's run records
(grid/runs/**/result.json): statistics over seeds, paired comparisons, the markdown of reports/table1.md,
table2.md and levers.md and their figures. The only numbers not computed from runs are the paper's, quoted
from `unet_ssl.experiments.grid_plan`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from unet_ssl.core.stats import PerImage, confusion_from_record, dataset_jaccard, paired_text
from unet_ssl.data.species import SPECIES, describe_pets, scores_by_species
from unet_ssl.experiments import figures, grid_plan
from unet_ssl.paths import (
    GRID_DATA,
    GRID_PARAMS,
    GRID_PRETRAIN_RECORD,
    LEARNING_CURVES_FIGURE,
    MAE_FIGURE,
    PETS_FOLDER,
    PETS_MANIFEST,
    PREDICTIONS_FIGURE,
    PRETRAIN_FOLDER,
    PRETRAIN_MANIFEST,
    PRETRAINING_LOSS_FIGURE,
    SUBSET_FIGURE,
    grid_pretraining,
    table_figures,
    table_report,
)
from unet_ssl.render import image, mean_sd, number, percent, table

SCORES = {  # column -> (label, path in a result's "test" scores)
    "f1": ("F1", ("f1",)),
    "jaccard": ("Jaccard", ("jaccard",)),
    "paper_f1": ("F1", ("paper_style", "f1")),
    "paper_jaccard": ("Jaccard", ("paper_style", "jaccard")),
    "border_jaccard": ("border Jaccard", ("per_class", "jaccard", "border")),
}
RESAMPLES = 2000  # bootstrap resamples of a paired comparison
PAIRED = ("paired by seed (the seeds both cells ran): mean difference with a 95% bootstrap interval over "
          f"seeds and the split's images ({RESAMPLES} resamples); 'better'/'worse' only where the interval excludes "
          "zero, else 'within noise'.")


def _get(scores: dict, path: tuple[str, ...]) -> float:
    for key in path:
        scores = scores[key]
    return float("nan") if scores is None else float(scores)


def metric_frame(frame: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """The run records with one column per score of SCORES (no run: the empty frame as it is), and with the
    pets' `names` (dataset order) the dataset-level Jaccard of each species' test pets (cat_jaccard, dog_jaccard)."""
    if not len(frame):
        return frame
    out = frame.copy()
    for column, (_, path) in SCORES.items():
        out[column] = [_get(t, path) for t in frame["test"]]
    out["val_jaccard"] = [history[epoch - 1].get("val_jaccard", math.nan)
                          for history, epoch in zip(frame["history"], frame["selected_epoch"])]
    if names is not None:
        scores = [species_jaccard(per_image(record), names) for _, record in frame.iterrows()]
        for kind in SPECIES:
            out[f"{kind}_jaccard"] = [s.get(kind, math.nan) for s in scores]
    return out


def species_jaccard(saved: PerImage | None, names: list[str]) -> dict[str, float]:
    """Dataset-level Jaccard of the cats and of the dogs among a run's test pets; empty where the record
    predates per-image matrices."""
    if saved is None:
        return {}
    return {kind: s["jaccard"] for kind, s in scores_by_species(names, *saved).items()}


def pet_names(prepared: Path = GRID_DATA) -> list[str]:
    """The labelled pets' names in dataset order (the manifest's row order is the tensors' order)."""
    return pd.read_csv(prepared / PETS_FOLDER / PETS_MANIFEST)["name"].tolist()


def stats(frame: pd.DataFrame, cell: grid_plan.Cell, column: str) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one seed) and number of seeds of a cell's metric."""
    values = frame.loc[frame["cell"] == cell.name, column].dropna() if len(frame) else pd.Series(dtype=float)
    if values.empty:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def cell_score(frame: pd.DataFrame, cell: grid_plan.Cell, column: str) -> str:
    """A cell's `column` as mean ± sd over seeds; '—' where the cell ran but none of its runs has a value
    (a species' Jaccard where the test split holds no pet of that species)."""
    mean, sd, n = stats(frame, cell, column)
    return "—" if n == 0 and seed_runs(frame, cell) else mean_sd(mean, sd, n)


def seed_runs(frame: pd.DataFrame, cell: grid_plan.Cell) -> dict[int, pd.Series]:
    """A cell's run records by seed."""
    runs = frame[frame["cell"] == cell.name] if len(frame) else frame
    return {int(r["seed"]): r for _, r in runs.iterrows()}


def per_image(record: pd.Series, split: str = "test") -> PerImage | None:
    """(indices, per-image confusion matrices) of a run on the test or validation split, None where its
    record predates them."""
    saved = record.get(f"{split}_confusion")
    return confusion_from_record(saved) if isinstance(saved, dict) else None


def split_jaccard(record: pd.Series, split: str) -> float:
    """A run's dataset-level Jaccard on the test split, or on validation from its per-image matrices."""
    if split == "test":
        return float(record["jaccard"])
    saved = per_image(record, split)
    return math.nan if saved is None else float(dataset_jaccard(saved[1].sum(0)))


def difference(frame: pd.DataFrame, cell: grid_plan.Cell, baseline: grid_plan.Cell, split: str = "test") -> str:
    """Dataset-level Jaccard of `cell` minus `baseline` on `split`, paired by seed (the seeds both ran): the
    mean difference with a bootstrap interval over seeds and images, and a verdict only where the
    interval excludes zero."""
    a, b = seed_runs(frame, baseline), seed_runs(frame, cell)
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return "—"
    plain = float(np.mean([split_jaccard(b[s], split) - split_jaccard(a[s], split) for s in seeds]))
    return paired_text([per_image(a[s], split) for s in seeds], [per_image(b[s], split) for s in seeds], plain,
                       RESAMPLES)


def scratch_baseline(cell: grid_plan.Cell) -> grid_plan.Cell:
    """The from-scratch run a cell is judged against: no pretraining, encoder trained, same skips and subset."""
    return grid_plan.Cell("none", freeze_encoder=False, skip_connections=cell.skip_connections, subset=cell.subset)


def data_statement(params: dict, prepared: Path = GRID_DATA) -> list[str]:
    """What the runs saw, from the manifests in `prepared` (pets/ and pretrain/)."""
    pets = pd.read_csv(prepared / PETS_FOLDER / PETS_MANIFEST)
    photos = pd.read_csv(prepared / PRETRAIN_FOLDER / PRETRAIN_MANIFEST)
    counts = pets["split"].value_counts()
    test = pets.loc[pets["split"] == "test", "name"]
    d = params["data"]
    return [
        f"- Data: {describe_pets(pets['name'])} from `{d['raw_dir']}`, "
        f"split {counts.get('train', 0)} train / {counts.get('val', 0)} validation / {counts.get('test', 0)} test "
        f"(split `{d['split']}`, seed {d['split_seed']}); test split: {describe_pets(test)}. The full Oxford-IIIT "
        "Pet set has 7,390 pets of 37 breeds (2,371 cats, 4,978 dogs).",
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
    one_batch = (f" With {n_test} test pets in one batch of {batch}, the two views coincide here (the paper had "
                 "about 740 test pets, 3 batches).") if 0 < n_test <= batch else ""
    more = "; ".join(f"{cell} {seeds}" for cell, seeds in (params["grid"].get("cell_seeds") or {}).items())
    return [
        f"- Profile: `{params['profile']}` ({GRID_PARAMS.as_posix()}), seeds {params['grid']['seeds']}"
        f"{f' (cells with their own: {more})' if more else ''}, run on {devices}.",
        f"- Pretraining: epochs {pre['epochs']}, batch {pre['batch_size']}, lr {pre['lr']}, {pre['image_size']} px, "
        f"temperature {pre['temperature']}, masks {percent(pre['mask_ratio'])} in {pre['mask_patch']}-px patches, "
        f"loss over {'the masked pixels' if pre['masked_only_loss'] else 'the whole image'}"
        f"{f'; per method: {over}' if over else ''}.",
        f"- Fine-tuning: epochs {ft['epochs']}, batch {ft['batch_size']}, lr {ft['lr']}, {ft['image_size']} px, "
        f"augmentation `{ft['augment']}`, Dice loss, "
        f"{'weights of the best validation epoch' if ft['select_best'] else 'last-epoch weights'}; test scores on "
        "the fixed test split, never used to choose anything.",
        "- Metrics: dataset-level (one confusion matrix over the test split; primary) and paper-style (per batch of "
        f"{batch}, mean over the classes present, then over batches).{one_batch}",
    ]


def timing_statement(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "- Time: no runs yet."
    pre = {}
    for record in frame.itertuples():
        path = grid_pretraining(record.pretrain_run, getattr(record, "pretrain_dir", None)) / GRID_PRETRAIN_RECORD
        if path.is_file():
            pre[record.pretrain_run] = json.loads(path.read_text())
    compute = frame["seconds"].sum() + sum(p["seconds"] for p in pre.values())
    starts = [*frame["started"], *(p["started"] for p in pre.values())]
    ends = [*frame["finished"], *(p["finished"] for p in pre.values())]
    span = (pd.Timestamp(max(ends)) - pd.Timestamp(min(starts))).total_seconds()
    return (f"- Time: {len(frame)} fine-tuning runs ({frame['seconds'].sum() / 60:.1f} min) and {len(pre)} "
            f"pretraining runs ({sum(p['seconds'] for p in pre.values()) / 60:.1f} min): {compute / 60:.1f} min of "
            f"compute; {span / 60:.1f} min from the first start to the last finish.")


def diagnostics(frame: pd.DataFrame, cells: list[grid_plan.Cell]) -> list[str]:
    """Per cell: training set size, selected epoch, best and last validation Jaccard and the
    epoch-to-epoch swing of validation Jaccard over the second half of training."""
    rows = []
    for cell in cells:
        runs = frame[frame["cell"] == cell.name] if len(frame) else frame
        if runs.empty:
            rows.append([cell.name, 0, *[""] * 6])
            continue
        best, last, swing = [], [], []
        for history in runs["history"]:
            val = [h.get("val_jaccard", math.nan) for h in history]
            best.append(max(val))
            last.append(val[-1])
            tail = val[len(val) // 2:]
            swing.append(float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else math.nan)
        swings = [s for s in swing if not math.isnan(s)]
        rows.append([cell.name, len(runs), int(runs["n_train"].iloc[0]), number(runs["selected_epoch"].mean(), 1),
                     number(np.mean(best)), number(np.mean(last)), number(np.mean(swings) if swings else None,
                                                                          absent="—"),
                     number(runs["seconds"].mean(), 0)])
    return table(["cell", "seeds", "training pets", "selected epoch", "best val Jaccard", "last-epoch val Jaccard",
                  "val swing (2nd half)", "seconds per run"], rows)


def header(table: grid_plan.Table, params: dict, frame: pd.DataFrame) -> list[str]:
    return [f"# {table.title}", "",
            f"Generated by `dvc repro grid/dvc.yaml:{table.name}` (`unet-ssl grid table {table.name}`) from the run "
            "records in grid/runs/ (one fine-tuning run per cell and seed, each in MLflow under stage `grid_finetune` "
            "with tags method, freeze_encoder, skip_connections, subset, seed). Mean ± sample standard deviation over "
            f"seeds; the paper's values are quoted from {grid_plan.PAPER_CITATION}.", "",
            *data_statement(params), *profile_statement(params, frame), timing_statement(frame), ""]


def table1_lines(frame: pd.DataFrame) -> list[str]:
    paper = grid_plan.TABLE1
    scratch = grid_plan.Cell("none", freeze_encoder=False)
    rows = []
    for line in paper.rows:
        cell = line.cells[0]
        theirs = grid_plan.paper_value(paper, cell)
        rows.append([line.label, stats(frame, cell, "jaccard")[2],
                     *[mean_sd(*stats(frame, cell, c)) for c in ("f1", "jaccard", "paper_f1", "paper_jaccard")],
                     number(theirs[0], absent="—"), number(theirs[1], absent="—"),
                     mean_sd(*stats(frame, cell, "border_jaccard")),
                     *[cell_score(frame, cell, f"{kind}_jaccard") for kind in SPECIES],
                     "baseline" if cell == scratch else difference(frame, cell, scratch)])
    return ["## Scores", "",
            *table(["pretraining", "seeds", "F1 (dataset-level)", "Jaccard (dataset-level)", "F1 (paper-style)",
                    "Jaccard (paper-style)", "paper F1", "paper Jaccard", "border Jaccard", "cats Jaccard",
                    "dogs Jaccard", "Jaccard vs from scratch"], rows),
            "", "Jaccard vs from scratch: difference of dataset-level Jaccard to the U-Net trained from scratch "
                f"(no pretraining, encoder trained, skips), {PAIRED}", "",
            "Rows marked 'batch-norm statistics recomputed': the frozen encoder's batch-norm running means and "
            "variances are re-estimated once on the training pets before fine-tuning (`finetune.recompute_bn_stats`) "
            "instead of keeping those gathered on the pretraining inputs (colour-jittered crops, masked photos) or, "
            "for the random encoder, none at all (mean 0, variance 1).", ""]


def with_paper(frame: pd.DataFrame, paper: grid_plan.Table, cell: grid_plan.Cell, column: str) -> str:
    """Our mean ± sd of a cell, with the paper's value beside it where it has one."""
    theirs = grid_plan.paper_value(paper, cell)[1]
    return mean_sd(*stats(frame, cell, column)) + ("" if theirs is None else f" (paper {number(theirs)})")


def table2_lines(frame: pd.DataFrame) -> list[str]:
    paper = grid_plan.TABLE2
    columns = ["variant", *paper.columns]
    lines = []
    for column, title in (("jaccard", "Dataset-level Jaccard (primary)"), ("paper_jaccard", "Paper-style Jaccard")):
        rows = [[line.label, *[with_paper(frame, paper, cell, column) for cell in line.cells]] for line in paper.rows]
        lines += [f"## {title}", "", *table(columns, rows), ""]
    rows = [[line.label, *[" / ".join(cell_score(frame, cell, f"{kind}_jaccard") for kind in SPECIES)
                           for cell in line.cells]] for line in paper.rows]
    lines += ["## Per species: dataset-level Jaccard, cats / dogs", "",
              "The shared data is mostly cats, so the overall score is mostly a cat score; each species' test pets "
              "scored on their own (their per-image confusion matrices summed); — where the test split holds none of "
              "that species.", "", *table(columns, rows), ""]
    rows = [[line.label, *["baseline" if cell == scratch_baseline(cell) else
                           difference(frame, cell, scratch_baseline(cell)) for cell in line.cells]]
            for line in paper.rows]
    lines += ["## Against training from scratch", "",
              "Dataset-level Jaccard minus that of the U-Net trained from scratch with the same skips and subset, "
              f"{PAIRED}", "", *table(columns, rows)]
    rows = []
    for line in paper.rows:
        full, tenth = line.cells[0], line.cells[1]
        theirs = [grid_plan.paper_value(paper, c)[1] for c in (full, tenth)]
        rows.append([line.label, difference(frame, full, tenth),
                     "—" if None in theirs else f"{theirs[0] - theirs[1]:+.3f}"])
    lines += ["", "## More data, better scores? (the paper's suspected anomaly)", "",
              "The paper's frozen-encoder, no-skip SimCLR U-Net scored 0.469 on 90% of the pets but 0.650 on 10%, the "
              "only row where more data scored lower. Our runs, dataset-level Jaccard at 90% minus at 10%, "
              f"{PAIRED}", "", *table(["variant", "90% − 10%", "paper"], rows)]
    rows = []
    for line in paper.rows:
        full, tenth = (frame.loc[frame["cell"] == c.name, "jaccard"].dropna() if len(frame) else pd.Series(dtype=float)
                       for c in line.cells[:2])
        pairs = [(a, b) for a in full for b in tenth]
        rows.append([line.label, f"{sum(b > a for a, b in pairs)} of {len(pairs)}" if pairs else "—",
                     number(tenth.max() - tenth.min()) if len(tenth) > 1 else "—"])
    lines += ["", "One run per cell, as the paper reports, compares one seed with one seed. Of the single-seed "
                  "pairings (each 90% run against each 10% run of the same variant), the share in which 10% scored "
                  "higher:", "", *table(["variant", "10% above 90%", "largest 10% seed range"], rows)]
    return lines + [""]


def pretraining_budget(frame: pd.DataFrame, cell: grid_plan.Cell) -> str:
    """What a cell's pretraining saw, from its first seed's record: photos x epochs, and minutes per run."""
    runs = seed_runs(frame, cell)
    if cell.method == "none" or not runs:
        return "—"
    first = runs[min(runs)]
    path = grid_pretraining(first["pretrain_run"], first.get("pretrain_dir")) / GRID_PRETRAIN_RECORD
    if not path.is_file():
        return "—"
    record = json.loads(path.read_text())
    return f"{record['n_images']:,} × {record['config']['epochs']} epochs, {record['seconds'] / 60:.0f} min"


def levers_lines(frame: pd.DataFrame) -> list[str]:
    levers = grid_plan.LEVERS
    scratch = scratch_baseline(levers.cells[0])
    rows = []
    for line in levers.rows:
        cell = line.cells[0]
        against = (["baseline"] * 2 if cell == scratch else
                   [difference(frame, cell, scratch, split) for split in ("val", "test")])
        rows.append([line.label, stats(frame, cell, "jaccard")[2], mean_sd(*stats(frame, cell, "val_jaccard")),
                     mean_sd(*stats(frame, cell, "jaccard")),
                     *[cell_score(frame, cell, f"{kind}_jaccard") for kind in SPECIES], *against,
                     pretraining_budget(frame, cell)])
    return ["## Scores", "",
            "Every row fine-tunes the same way (the profile's `finetune` group: same epochs, batch, learning rate, "
            "augmentation, weights of the best validation epoch) with the encoder trained and skips on, on 90% of "
            "the pets (the whole training split); only the starting weights differ, and in the LP-FT rows when "
            "the encoder starts training (frozen for the first epochs, in the same budget). A lever pays off where "
            "both the validation and the test interval against training from scratch exclude zero in its favour; "
            "validation decides, test confirms.", "",
            *table(["pretraining", "seeds", "val Jaccard", "test Jaccard", "cats Jaccard (test)",
                    "dogs Jaccard (test)", "val vs from scratch", "test vs from scratch",
                    "pretraining photos × epochs, time"], rows),
            "", f"vs from scratch: dataset-level Jaccard minus that of the U-Net trained from scratch, {PAIRED}", "",
            "## Where the levers come from", "", *[f"- {paper}" for paper in grid_plan.LEVER_PAPERS], ""]


def subset_points(frame: pd.DataFrame, paper: grid_plan.Table) -> tuple[dict, dict]:
    """Per row of Table 2: (subset, mean, sd) of the cells run, and (subset, value) of the paper's."""
    ours, theirs = {}, {}
    for line in paper.rows:
        points = [(cell.subset, *stats(frame, cell, "jaccard")) for cell in line.cells]
        ours[line.label] = [p[:3] for p in points if p[3]]
        theirs[line.label] = [(c.subset, grid_plan.paper_value(paper, c)[1]) for c in line.cells
                              if grid_plan.paper_value(paper, c)[1] is not None]
    return ours, theirs


def write_report(params: dict, paper: grid_plan.Table, frame: pd.DataFrame) -> Path:
    """reports/<table>.md with its figures, from the run records in `frame` (metric_frame); returns its path."""
    report, folder = table_report(paper.name), table_figures(paper.name)
    folder.mkdir(parents=True, exist_ok=True)
    lines = header(paper, params, frame)
    lines += {"table1": table1_lines, "table2": table2_lines, "levers": levers_lines}[paper.name](frame)
    figures.learning_curves(frame, paper, folder / LEARNING_CURVES_FIGURE)
    figures.pretraining_curves(frame, folder / PRETRAINING_LOSS_FIGURE)
    shown = [line.cells[0] for line in paper.rows]  # the 90% column
    absent = figures.prediction_grid(params, frame, shown, folder / PREDICTIONS_FIGURE)
    lines += ["## Figures", "", image("validation Jaccard per epoch", folder / LEARNING_CURVES_FIGURE, report), "",
              image("pretraining loss", folder / PRETRAINING_LOSS_FIGURE, report), "",
              image("example test predictions at 90%", folder / PREDICTIONS_FIGURE, report), ""]
    if absent:
        lines += [f"Not in the predictions: {', '.join(absent)}: their first-seed checkpoints, DVC outputs kept only "
                  "in the cache of the machine that ran them, are not in the workspace this report was made in.", ""]
    if paper.name == "table2":
        figures.subset_curves(*subset_points(frame, paper), folder / SUBSET_FIGURE)
        lines += [image("Jaccard vs subset size", folder / SUBSET_FIGURE, report), ""]
    elif paper.name == "table1":
        figures.mae_figure(params)
        lines += [image("MAE reconstructions", MAE_FIGURE, report), ""]
    lines += ["## Runs", "", *diagnostics(frame, paper.cells), "",
              "Every run: `grid/runs/<table or shared>/<cell>/s<seed>/result.json` (scores, history, MLflow run id).",
              ""]
    report.write_text("\n".join(lines))
    return report
