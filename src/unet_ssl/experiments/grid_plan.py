"""The paper's two tables as grids of runs: the cells each table holds, the pretraining each cell
needs (shared by every cell that needs the same one, so nothing is pretrained twice), and the run
plan that `grid/dvc.yaml` iterates over with `foreach`.

Plain Python: no torch, MLflow or DVC here, so the plan can be computed and checked anywhere.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from unet_ssl.config import METHODS, FinetuneConfig, pretrains_decoder
from unet_ssl.paths import GRID_PRETRAIN_VARIANTS, GRID_PRETRAINED

SUBSETS = (0.9, 0.1, 0.01)

# The paper's published numbers, quoted so our tables can stand beside them. They are the paper's
# results, not ours: "Investigating U-Net Pretraining with SimCLR for Image Segmentation" (UCL,
# student number 18006555; ../shared/paper/paper.txt), Table 1 (F1 and Jaccard; frozen encoder,
# skip connections, 90% of the pets) and Table 2 (Jaccard of SimCLR U-Nets). The paper does not say
# how it averaged beyond "per class, then across classes, then over batches" (our paper-style view).
PAPER_CITATION = ("Investigating U-Net Pretraining with SimCLR for Image Segmentation (UCL, student 18006555), "
                  "Tables 1 and 2")
PAPER_TABLE1 = {  # method -> (F1, Jaccard)
    "simclr": (0.775, 0.650),
    "mae_patch": (0.779, 0.656),
    "mae_pixel": (0.754, 0.622),
    "mae_none": (0.748, 0.614),
}
PAPER_TABLE2 = {  # (freeze_encoder, skip_connections) -> {subset: Jaccard}, SimCLR pretraining
    (False, False): {0.9: 0.706, 0.1: 0.575, 0.01: 0.467},
    (False, True): {0.9: 0.716, 0.1: 0.602, 0.01: 0.448},
    (True, False): {0.9: 0.469, 0.1: 0.650, 0.01: 0.550},
    (True, True): {0.9: 0.646, 0.1: 0.559, 0.01: 0.420},
}


@dataclass(frozen=True)
class Cell:
    """One table cell: a pretraining method and a fine-tuning variant, run once per seed."""

    method: str
    freeze_encoder: bool = True
    skip_connections: bool = True
    subset: float = 0.9
    projection: str = "bottleneck"  # SimCLR's projection head: bottleneck | multi_level
    recompute_bn: bool = False  # re-estimate batch-norm statistics on the training pets before fine-tuning
    variant: str = ""  # a pretraining variant of the profile's `grid.pretrain_variants` (the levers table)
    warmup_epochs: int = 0  # first fine-tuning epochs with the encoder frozen (finetune.warmup_epochs)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown pretraining method {self.method!r}; expected one of {METHODS}")
        if self.projection != "bottleneck" and self.method != "simclr":
            raise ValueError("only SimCLR has a projection head")
        if self.variant and (self.method == "none" or not self.variant.replace("_", "").isalnum()):
            raise ValueError(f"pretraining variant {self.variant!r}: needs a pretraining method and a name of "
                             "letters, digits and underscores")
        FinetuneConfig(freeze_encoder=self.freeze_encoder, warmup_epochs=self.warmup_epochs)  # its warm-up rule

    @property
    def name(self) -> str:
        """Readable and free of dots (DVC reads dots in parameter names as nesting): simclr-frozen-skip-90,
        simclr-trained-warmup2-skip-90."""
        encoder = "frozen" if self.freeze_encoder else "trained"
        encoder += f"-warmup{self.warmup_epochs}" if self.warmup_epochs else ""
        skips = "skip" if self.skip_connections else "noskip"
        norms = "-bnrecomputed" if self.recompute_bn else ""
        return f"{self.pretrained_by}-{encoder}{norms}-{skips}-{self.subset * 100:g}".replace(".", "p")

    @property
    def pretrained_by(self) -> str:
        """The method, SimCLR's head and the variant: simclr, simclr-multilevel, mae_patch-with_pets."""
        head = "-multilevel" if self.projection == "multi_level" else ""
        return f"{self.method}{head}{f'-{self.variant}' if self.variant else ''}"

    @property
    def pretraining(self) -> tuple[str, str, bool, str]:
        """What the pretrained checkpoint depends on besides the seed: the method, SimCLR's head, the
        skip connections for methods that pretrain the decoder only (masked autoencoders and dense contrast train
        the whole U-Net; SimCLR trains the encoder alone, so one SimCLR checkpoint serves the skip and the no-skip
        U-Net), and the variant."""
        skips = self.skip_connections if pretrains_decoder(self.method) else True
        return self.method, self.projection, skips, self.variant

    def pretrain_key(self, seed: int) -> str:
        skips = self.pretraining[2]
        return f"{self.pretrained_by}{'' if skips else '-noskip'}-s{seed}"


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell, ...]  # one per column of the table


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]

    @property
    def cells(self) -> list[Cell]:
        return [cell for row in self.rows for cell in row.cells]


TABLE1 = Table(
    name="table1",
    title="Table 1: pretraining methods (frozen encoder, skip connections, 90% of the pets)",
    columns=("90%",),
    rows=(
        Row("SimCLR", (Cell("simclr"),)),
        Row("MAE, patch masking", (Cell("mae_patch"),)),
        Row("MAE, pixel masking", (Cell("mae_pixel"),)),
        Row("MAE, no masking", (Cell("mae_none"),)),
        Row("none: frozen random encoder (baseline)", (Cell("none"),)),
        Row("none: trained from scratch (baseline)", (Cell("none", freeze_encoder=False),)),
        Row("SimCLR, multi-level projection head (ours)", (Cell("simclr", projection="multi_level"),)),
        *(Row(f"{label}, batch-norm statistics recomputed on the pets (ours)", (Cell(method, recompute_bn=True),))
          for method, label in (("simclr", "SimCLR"), ("mae_patch", "MAE, patch masking"),
                                ("mae_pixel", "MAE, pixel masking"), ("mae_none", "MAE, no masking"),
                                ("none", "none: frozen random encoder"))),
    ),
)


def _table2_rows() -> tuple[Row, ...]:
    rows = []
    for method, name in (("simclr", "SimCLR"), ("none", "none (baseline)")):
        # the paper's row order: unfrozen no skip, unfrozen skip, frozen no skip, frozen skip
        for freeze in (False, True):
            for skip in (False, True):
                label = f"{name}, {'frozen' if freeze else 'trained'} encoder, {'skips' if skip else 'no skips'}"
                rows.append(Row(label, tuple(Cell(method, freeze, skip, subset) for subset in SUBSETS)))
    return tuple(rows)


TABLE2 = Table(
    name="table2",
    title="Table 2: frozen / trained encoder x skip connections x fine-tuning subset",
    columns=tuple(f"{s * 100:g}%" for s in SUBSETS),
    rows=_table2_rows(),
)

# Does pretraining pay off with the whole training split? Every row fine-tunes with the encoder trained and
# skips on, on 90% of the pets with the same fine-tuning settings, so only the starting weights differ.
# The variants' settings (photos, epochs, pets, temperature, lr) are the profile's `grid.pretrain_variants`.
LEVERS = Table(
    name="levers",
    title="Pretraining levers: encoder trained, skip connections, 90% of the pets (the whole training split)",
    columns=("90%",),
    rows=(
        Row("none: trained from scratch (baseline)", (Cell("none", freeze_encoder=False),)),
        Row("SimCLR, as in Table 2", (Cell("simclr", freeze_encoder=False),)),
        Row("SimCLR, all photos for longer (Chen et al. 2020)", (Cell("simclr", False, variant="all_photos"),)),
        Row("SimCLR + the training split's pets, unlabelled (Reed et al. 2022)",
            (Cell("simclr", False, variant="with_pets"),)),
        Row("SimCLR, the Optuna study's temperature and learning rate", (Cell("simclr", False, variant="tuned"),)),
        Row("MAE, patch masking: the decoder pretrained too (He et al. 2022)",
            (Cell("mae_patch", freeze_encoder=False),)),
        Row("MAE, patch masking + the training split's pets, unlabelled",
            (Cell("mae_patch", False, variant="with_pets"),)),
        Row("MAE, patch masking + the training split's pets, 4x the epochs (He et al. 2022)",
            (Cell("mae_patch", False, variant="with_pets_longer"),)),
        Row("MAE, patch masking + the training split's pets, loss on the masked pixels only (He et al. 2022)",
            (Cell("mae_patch", False, variant="with_pets_masked_loss"),)),
        Row("SimCLR + dense pixel contrast on the decoder's features (Wang et al. 2021; Pinheiro et al. 2020)",
            (Cell("dense", freeze_encoder=False),)),
        Row("SimCLR, encoder frozen for the first 2 fine-tuning epochs (LP-FT, Kumar et al. 2022)",
            (Cell("simclr", False, warmup_epochs=2),)),
        Row("MAE, patch masking + the training split's pets, encoder frozen for the first 2 fine-tuning epochs "
            "(LP-FT)", (Cell("mae_patch", False, variant="with_pets", warmup_epochs=2),)),
    ),
)
LEVER_PAPERS = (
    "Chen, Kornblith, Norouzi, Hinton (2020), A Simple Framework for Contrastive Learning of Visual "
    "Representations: SimCLR gains from longer training and more data.",
    "Reed et al. (2022), Self-Supervised Pretraining Improves Self-Supervised Pretraining: adding target-domain "
    "images to the pretraining data.",
    "He et al. (2022), Masked Autoencoders Are Scalable Vision Learners: masked reconstruction at the patch scale, "
    "which keeps improving with longer pretraining schedules and with the loss on the masked patches only.",
    "Wang, Zhang, Shen, Kong, Li (2021), Dense Contrastive Learning for Self-Supervised Visual Pre-Training "
    "(DenseCL): a global and a dense contrastive loss, averaged.",
    "Pinheiro, Almahairi, Benmalek, Golemo, Courville (2020), Unsupervised Learning of Dense Visual Representations "
    "(VADeR): an encoder-decoder trained with per-pixel contrast, a pixel's positive being the same spot in the "
    "other view.",
    "Kumar, Raghunathan, Jones, Ma, Liang (2022), Fine-Tuning can Distort Pretrained Features and Underperform "
    "Out-of-Distribution (LP-FT): a fresh head's early gradients distort pretrained features; training the head "
    "on the frozen encoder first, then everything, avoids that.",
    "Akiba et al. (2019), Optuna: A Next-generation Hyperparameter Optimization Framework (the tuning study).",
)

PAPER_TABLES = (TABLE1, TABLE2)
TABLES = {t.name: t for t in (*PAPER_TABLES, LEVERS)}


def paper_value(table: Table, cell: Cell) -> tuple[float | None, float | None]:
    """The paper's (F1, Jaccard) for a cell, None where the paper has no such cell."""
    ours = cell.projection != "bottleneck" or cell.recompute_bn  # a head or statistics the paper did not have
    if table.name == "table1" and not ours and cell.method in PAPER_TABLE1:
        return PAPER_TABLE1[cell.method]
    if table.name == "table2" and cell.method == "simclr":
        return None, PAPER_TABLE2[(cell.freeze_encoder, cell.skip_connections)][cell.subset]
    return None, None


def home(cell: Cell) -> str:
    """The folder under grid/runs/ a cell's runs live in: the paper table that holds it, `shared` when both
    do (each table's stage depends on its own folder and on `shared`), else the one other table holding it
    (the levers table reads its cells from Table 2's folder and `shared` too)."""
    owners = [t.name for t in PAPER_TABLES if cell in t.cells] or [t.name for t in TABLES.values() if cell in t.cells]
    return "shared" if len(owners) > 1 else owners[0]


def levers_baselines() -> list[Cell]:
    """The levers table's cells whose runs a paper table holds (scratch, SimCLR as in Table 2). The levers
    stage depends on their folders alone (grid/dvc.yaml), not on whole paper tables."""
    return [c for c in LEVERS.cells if home(c) != LEVERS.name]


def selected_cells(grid_params: dict) -> list[Cell]:
    """The cells of the tables named in `grid.tables`, restricted to `grid.cells` when that lists names."""
    wanted = set(grid_params.get("cells") or [])
    cells: list[Cell] = []
    for name in grid_params["tables"]:
        if name not in TABLES:
            raise ValueError(f"grid.tables: unknown table {name!r}; expected {sorted(TABLES)}")
        cells += [c for c in TABLES[name].cells if c not in cells and (not wanted or c.name in wanted)]
    known = {c.name for t in TABLES.values() for c in t.cells}
    for setting in ("cells", "cell_seeds"):
        unknown = set(grid_params.get(setting) or []) - known
        if unknown:
            raise ValueError(f"grid.{setting}: no table holds {sorted(unknown)}")
    missing = [c.name for c in levers_baselines() if c not in cells]
    if any(home(c) == LEVERS.name for c in cells) and missing:
        raise ValueError(f"grid.cells: the levers table compares its rows with {missing}; select them too")
    return cells


VARIANT_KEYS = {"photos", "training_pets", "pretrain"}


def pretrain_variant(params: dict, name: str) -> dict:
    """A variant of `grid.pretrain_variants`: `photos` (a seeded subset of that many of the raw pretraining
    photos instead of the prepared ones; 0 = all), `training_pets` (add the training split's pet photos,
    never validation or test) and `pretrain` (overrides of the pretrain group)."""
    variants = params["grid"].get("pretrain_variants") or {}
    if name not in variants:
        raise ValueError(f"grid.pretrain_variants has no {name!r} (a cell of the levers table needs it); "
                         f"it has {sorted(variants)}")
    variant = variants[name] or {}
    unknown = set(variant) - VARIANT_KEYS
    if unknown:
        raise ValueError(f"grid.pretrain_variants.{name}: unknown keys {sorted(unknown)}; "
                         f"expected some of {sorted(VARIANT_KEYS)}")
    return variant


def pretrain_config(params: dict, method: str, projection: str, variant: str = "") -> dict:
    """The profile's `pretrain` group with the method, its head, the per-method overrides
    (`grid.pretrain_overrides`, e.g. the paper's 128 px for masked autoencoders) and the variant's
    overrides applied. The baseline `none` trains nothing, so none of the settings apply to it."""
    if method == "none":
        return {"method": "none", "projection": projection}
    cfg = copy.deepcopy(params["pretrain"])
    cfg |= (params["grid"].get("pretrain_overrides") or {}).get(method, {})
    if variant:
        cfg |= pretrain_variant(params, variant).get("pretrain") or {}
    cfg |= {"method": method, "projection": projection}
    return cfg


def cell_seeds(grid_params: dict, cell: Cell) -> list[int]:
    """`grid.seeds`, or the cell's own list in `grid.cell_seeds`: more seeds where an interval is too wide."""
    return (grid_params.get("cell_seeds") or {}).get(cell.name, grid_params["seeds"])


def plan(params: dict) -> dict:
    """Every pretraining run and fine-tuning run of the selected cells x their seeds (`cell_seeds`), keyed by
    names free of dots. Fine-tuning runs name the pretraining run whose checkpoint they start from.
    Pretraining runs of a variant are planned apart (`pretrain_variant`): their stage also reads the
    raw photos and the prepared pets."""
    pretrain_runs: dict[str, dict] = {}
    variant_runs: dict[str, dict] = {}
    finetune_runs: dict[str, dict] = {}
    for cell in selected_cells(params["grid"]):
        method, projection, skips, variant = cell.pretraining
        for seed in cell_seeds(params["grid"], cell):
            key = cell.pretrain_key(seed)
            run = {"seed": seed, "skip_connections": skips,
                   "pretrain": pretrain_config(params, method, projection, variant)}
            if variant:
                chosen = pretrain_variant(params, variant)
                run |= {"variant": variant, "photos": chosen.get("photos"),
                        "training_pets": bool(chosen.get("training_pets"))}
            (variant_runs if variant else pretrain_runs).setdefault(key, run)
            finetune_runs[f"{cell.name}-s{seed}"] = {
                "cell": cell.name,
                "seed": seed,
                "dir": f"{home(cell)}/{cell.name}/s{seed}",
                "pretrain": key,
                "pretrained": f"{(GRID_PRETRAIN_VARIANTS if variant else GRID_PRETRAINED).as_posix()}/{key}",
                "finetune": {**params["finetune"], "freeze_encoder": cell.freeze_encoder,
                             "skip_connections": cell.skip_connections, "subset": cell.subset,
                             "recompute_bn_stats": cell.recompute_bn, "warmup_epochs": cell.warmup_epochs},
                "runtime": {**params["runtime"], **(params["grid"].get("finetune_runtime") or {})},
            }
    return {"pretrain": pretrain_runs, "pretrain_variant": variant_runs, "finetune": finetune_runs}


def cell_by_name(name: str) -> Cell:
    for table in TABLES.values():
        for cell in table.cells:
            if cell.name == name:
                return cell
    raise KeyError(f"no table holds a cell named {name!r}")
