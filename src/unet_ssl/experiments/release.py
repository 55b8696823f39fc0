"""`unet-ssl release`: publishes one fine-tuned model as `<out>/pets-unet.pt` with a model card
(`<out>/README.md`) generated from its run.

The file is the fine-tuned checkpoint itself, copied byte for byte, so it loads with
`torch.load(weights_only=True)` and `unet-ssl evaluate --checkpoint`, and its hash matches the
run's. Candidates are the main pipeline's model (checkpoints/finetuned.pt, when the pipeline is up
to date) and, with `include_grid`, every grid run; the best validation Jaccard wins. Test scores
are reported, never used to choose."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from unet_ssl.config import CLASS_NAMES
from unet_ssl.core import checkpoint
from unet_ssl.core.inference import predict
from unet_ssl.core.runtime import make_runtime
from unet_ssl.core.stats import (
    PerImage,
    confusion_from_record,
    paired_text,
    per_image_confusion,
)
from unet_ssl.data.prepared import load_tensors
from unet_ssl.data.species import SPECIES, scores_by_species
from unet_ssl.data.splits import split_indices
from unet_ssl.experiments.grid_plan import PAPER_TABLE2
from unet_ssl.paths import (
    FINETUNED,
    GRID_DATA,
    GRID_FINETUNED_CHECKPOINT,
    GRID_PARAMS,
    GRID_PRETRAIN_RECORD,
    GRID_RESULT,
    PETS,
    PETS_FOLDER,
    PETS_TENSORS,
    PREDICTIONS,
    PREPARED,
    PROFILES,
    RELEASE_CARD,
    RELEASE_CHECKPOINT,
    TEST_SCORES,
    grid_pretraining,
)
from unet_ssl.render import number, table

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

MAX_BYTES = 10 * 1024 * 1024
PAPER_BEST_JACCARD = PAPER_TABLE2[(False, True)][0.9]  # the paper's best cell, the goal to beat
REGISTERED_MODEL = "pets-unet"
ALIAS = "champion"
RESCORE_BATCH = 64  # validation pets per forward pass when a model is scored again for its card
EXAMPLE_SIZE = 16  # side of the input example: the model takes photos of any size, so keep it small


class ReleaseError(ValueError):
    """Nothing to release, a model that is not what params.yaml describes, or a file over the size limit."""


@dataclass
class Candidate:
    source: str  # "main pipeline" or "grid run <key>"
    checkpoint: Path
    val_jaccard: float
    test: dict  # scores as in metrics/evaluate.json
    settings: dict  # seed, data, pretrain, finetune groups of the run
    profile: str
    prepared: Path  # folder with pets/ and pretrain/ manifests of the run's data
    mlflow_run_id: str | None
    pretrained_on: str = ""  # the pretraining photos where they are not the prepared ones (a grid variant)


def selected_val_jaccard(ckpt: dict) -> float:
    """Validation Jaccard of the epoch whose weights the checkpoint holds."""
    rows = [r for r in ckpt.get("history", []) if r.get("epoch") == ckpt.get("selected_epoch")]
    return float(rows[0].get("val_jaccard", math.nan)) if rows else math.nan


def profile_of(params: dict) -> str:
    """The profiles/ file params.yaml is a copy of, if any."""
    for path in sorted(PROFILES.glob("*.yaml")):
        if yaml.safe_load(path.read_text()) == params:
            return str(path)
    return "params.yaml (a copy of no file in profiles/)"


def pipeline_is_current() -> str:
    """'' when `dvc status` finds the main pipeline up to date through `evaluate`, else its report."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        status = repo.status(targets=["evaluate"], with_deps=True)
    return "" if not status else json.dumps(status, default=str)


def pipeline_run_id(params: dict) -> str | None:
    """The newest finished MLflow `finetune` stage run logged with exactly these params."""
    import mlflow

    from unet_ssl.tracking.mlflow_runs import EXPERIMENT, flatten, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow.MlflowClient().search_runs([experiment.experiment_id],
                                             "tags.stage = 'finetune' and attributes.status = 'FINISHED'",
                                             order_by=["attributes.start_time DESC"], max_results=500)
    wanted = flatten(params)
    return next((r.info.run_id for r in runs if r.data.params == wanted), None)


def pipeline_candidate(params: dict) -> Candidate | None:
    if not FINETUNED.is_file() or not TEST_SCORES.is_file():
        return None
    stale = pipeline_is_current()
    if stale:
        raise ReleaseError(f"the main pipeline is not up to date, so {FINETUNED} may not match params.yaml; "
                           f"run `dvc repro` first (dvc status: {stale[:300]})")
    ckpt = checkpoint.load(FINETUNED)
    return Candidate("main pipeline", FINETUNED, selected_val_jaccard(ckpt),
                     json.loads(TEST_SCORES.read_text())["test"],
                     {k: params[k] for k in ("seed", "data", "pretrain", "finetune")}, profile_of(params), PREPARED,
                     pipeline_run_id(params))


def grid_candidates() -> list[Candidate]:
    from unet_ssl.config import load_params
    from unet_ssl.experiments.grid_runs import results

    if not GRID_PARAMS.is_file():
        return []
    params = load_params(GRID_PARAMS)
    out = []
    for r in results(params).itertuples():
        path = Path(r.path) / GRID_FINETUNED_CHECKPOINT
        if not path.is_file():
            continue
        folder = grid_pretraining(r.pretrain_run, getattr(r, "pretrain_dir", None))
        pretraining = json.loads((folder / GRID_PRETRAIN_RECORD).read_text())
        settings = {"seed": r.seed, "data": params["data"], "pretrain": pretraining["config"], "finetune": r.finetune}
        variant = params["plan"]["pretrain_variant"].get(r.pretrain_run)
        out.append(Candidate(f"grid run {r.key}", path, selected_val_jaccard(checkpoint.load(path)), r.test, settings,
                             params["profile"], GRID_DATA, r.mlflow_run_id,
                             "" if variant is None else variant_photos_text(variant, pretraining["n_images"])))
    return out


def variant_photos_text(variant: dict, n_images: int) -> str:
    """What a pretraining variant of the grid trained on (see grid_runs.variant_photos)."""
    photos = "the prepared photos" if variant["photos"] is None else f"{variant['photos']:,} of the raw photos"
    pets = " + the training split's pets, unlabelled" if variant["training_pets"] else ""
    return f"{n_images:,} photos ({photos}{pets}; variant `{variant['variant']}`)"


def choose(candidates: list[Candidate]) -> Candidate:
    """Highest validation Jaccard (NaN never wins); the first such candidate on ties."""
    if not candidates:
        raise ReleaseError(f"nothing to release: no {FINETUNED} with metrics/evaluate.json (run `dvc repro`) "
                                "and no grid run (use --from-grid after `dvc repro grid/dvc.yaml:table1`)")
    return max(candidates, key=lambda c: -math.inf if math.isnan(c.val_jaccard) else c.val_jaccard)


def from_scratch(c: Candidate) -> bool:
    """No pretraining and the encoder trained."""
    return c.settings["pretrain"]["method"] == "none" and not c.settings["finetune"]["freeze_encoder"]


def alternative(c: Candidate, candidates: list[Candidate]) -> Candidate | None:
    """The best-validation candidate trained the other way: from scratch for a pretrained model,
    pretrained for one trained from scratch."""
    others = [o for o in candidates if from_scratch(o) != from_scratch(c)]
    return choose(others) if others else None


def candidate_per_image(c: Candidate) -> PerImage | None:
    """Per-image test confusion matrices: from a grid run's record, or for the main pipeline from its
    predictions and the prepared masks; None where they were not recorded."""
    if c.checkpoint == FINETUNED:
        if not PREDICTIONS.is_file():
            return None
        saved = torch.load(PREDICTIONS, map_location="cpu", weights_only=True)
        masks = load_tensors(PETS)["masks"][saved["index"]]
        return saved["index"].numpy(), per_image_confusion(saved["pred"], masks, len(CLASS_NAMES)).numpy()
    saved = json.loads((c.checkpoint.parent / GRID_RESULT).read_text()).get("test_confusion")
    return None if saved is None else confusion_from_record(saved)


def candidate_val_per_image(c: Candidate) -> PerImage:
    """Per-image validation confusion matrices of the released weights: from a grid run's record where it
    has them, else from the model run once more over the validation pets of its prepared data (fp32)."""
    if c.checkpoint != FINETUNED:
        saved = json.loads((c.checkpoint.parent / GRID_RESULT).read_text()).get("val_confusion")
        if saved is not None:
            return confusion_from_record(saved)
    pets = load_tensors(c.prepared / PETS_FOLDER / PETS_TENSORS)
    val = split_indices(pets["split"], "val")
    runtime = make_runtime({})
    pred = predict(runtime.model(checkpoint.load_model(c.checkpoint)), pets["images"][val], runtime, RESCORE_BATCH)
    return val.numpy(), per_image_confusion(pred, pets["masks"][val], len(CLASS_NAMES)).numpy()


def species_lines(c: Candidate) -> list[str]:
    """Validation and test scores of the cats and of the dogs apart (each species' per-image matrices summed):
    the shared data is mostly cats, so the overall score is mostly a cat score."""
    from unet_ssl.experiments.paper_tables import pet_names

    saved = candidate_per_image(c)
    if saved is None:
        return ["Per species: not recorded for this run."]
    names = pet_names(c.prepared)
    val, test = (scores_by_species(names, *per_image) for per_image in (candidate_val_per_image(c), saved))
    none = {"n_images": 0, "f1": None, "jaccard": None}  # a species with no pet in that split
    rows = []
    for kind in (k for k in SPECIES if k in val or k in test):
        v, t = val.get(kind, none), test.get(kind, none)
        rows.append([f"{kind}s", v["n_images"], number(v["jaccard"], absent="—"), t["n_images"],
                     number(t["f1"], absent="—"), number(t["jaccard"], absent="—")])
    return table(["species", "validation pets", "validation Jaccard", "test pets", "test F1", "test Jaccard"], rows)


def same_configuration(c: Candidate, candidates: list[Candidate]) -> dict[int, Candidate]:
    """Candidates by seed whose settings and data match `c`'s apart from the seed."""
    key = lambda x: ({k: v for k, v in x.settings.items() if k != "seed"}, x.prepared)  # noqa: E731
    return {int(x.settings["seed"]): x for x in candidates if key(x) == key(c)}


def paired_test(c: Candidate, alt: Candidate, candidates: list[Candidate]) -> str:
    """Test Jaccard of `c`'s configuration minus `alt`'s, paired by seed, or why there is no interval."""
    mine, theirs = same_configuration(c, candidates), same_configuration(alt, candidates)
    seeds = sorted(mine.keys() & theirs.keys())
    if not seeds or c.prepared != alt.prepared:
        return "no paired comparison is available (" + ("different test data)" if seeds else "no seed run by both)")
    plain = sum(mine[s].test["jaccard"] - theirs[s].test["jaccard"] for s in seeds) / len(seeds)
    text = paired_text([candidate_per_image(theirs[s]) for s in seeds], [candidate_per_image(mine[s]) for s in seeds],
                       plain)
    return f"paired by seed (seeds {', '.join(map(str, seeds))}): {text}"


def comparison_lines(c: Candidate, candidates: list[Candidate]) -> list[str]:
    """The model card's comparison with the alternative: validation (the choice) and paired test scores."""
    other = "pretrained" if from_scratch(c) else "trained from scratch"
    alt = alternative(c, candidates)
    if alt is None:
        return ["## Against the alternative", "", f"No candidate {other}: nothing to compare with.", ""]
    return ["## Against the alternative", "",
            f"- Choice, on validation only: validation Jaccard {number(c.val_jaccard)} against "
            f"{number(alt.val_jaccard)} for the best candidate {other} ({alt.source}).",
            "- Test (reported, chose nothing): dataset-level Jaccard of this model's settings minus those of "
            f"{alt.source}, {paired_test(c, alt, candidates)}. The interval is a 95% bootstrap over seeds and test "
            "images; 'better'/'worse' only where it excludes zero.", ""]


def model_card(c: Candidate, candidates: list[Candidate], path: Path, sha256: str) -> str:
    from unet_ssl.experiments.paper_tables import data_statement
    from unet_ssl.tracking.mlflow_runs import flatten

    test, ft, pre = c.test, c.settings["finetune"], c.settings["pretrain"]
    run = f"`{c.mlflow_run_id}`" if c.mlflow_run_id else "not found in the MLflow store"
    lines = [
        "# pets-unet: U-Net segmenting pets (pet / background / border)", "",
        f"Generated by `unet-ssl release` from the {c.source}; regenerate rather than edit.", "",
        f"- File: `{path.name}`, {path.stat().st_size / 2 ** 20:.1f} MiB, sha256 `{sha256}`; a checkpoint dict "
        "(`arch`, `model` state dict, fine-tuning `config`, `history`, `selected_epoch`) that loads with "
        "`torch.load(..., weights_only=True)`.",
        f"- Chosen: the best validation Jaccard ({number(c.val_jaccard)}) among {len(candidates)} candidate model(s); "
        "the test split chose nothing.",
        f"- MLflow run: {run} (stage run; browse with `make ui`).",
        f"- Profile: `{c.profile}`.",
        f"- Pretraining: `{pre['method']}`"
        + ("" if pre["method"] == "none" else
           f"{f' on {c.pretrained_on}' if c.pretrained_on else ''}, {pre.get('epochs')} epochs at "
           f"{pre.get('image_size')} px, batch {pre.get('batch_size')}")
        + f"; fine-tuning: {ft['epochs']} epochs at {ft['image_size']} px, batch {ft['batch_size']}, "
          f"subset {ft['subset']}, encoder {'frozen' if ft['freeze_encoder'] else 'trained'}, "
          f"skips {'on' if ft['skip_connections'] else 'off'}, augmentation `{ft['augment']}`; "
          f"seed {c.settings['seed']}.",
        *data_statement(c.settings, c.prepared), "",
        f"## Test scores ({test['n_images']} held-out pets at {ft['image_size']} px)", "",
        *table(["view", "F1", "Jaccard"],
               [["dataset-level (headline)", number(test["f1"]), number(test["jaccard"])],
                ["paper-style (per batch, as the paper)", number(test["paper_style"]["f1"]),
                 number(test["paper_style"]["jaccard"])]]), "",
        *table(["class", "F1", "Jaccard"], [[name, number(test["per_class"]["f1"][name]),
                                             number(test["per_class"]["jaccard"][name])] for name in CLASS_NAMES]), "",
        *species_lines(c), "",
        f"Against the paper's best Jaccard, {number(PAPER_BEST_JACCARD)} (Table 2, SimCLR, encoder trained, skips, "
        f"90%; fine-tuned on about 6,650 pets of 37 breeds): {test['jaccard'] - PAPER_BEST_JACCARD:+.3f}; other test "
        "images and seeds, "
        "so no paired comparison is available.", "",
        *comparison_lines(c, candidates),
        "## Use", "",
        "```python",
        "import torch",
        "from unet_ssl.core.checkpoint import load_model",
        f"model = load_model('models/{path.name}').eval()  # or torch.load(path, weights_only=True)['model']",
        f"x = torch.rand(1, 3, {ft['image_size']}, {ft['image_size']})  # RGB in [0, 1], side divisible by 8",
        "classes = model(x).argmax(1)  # 0 pet, 1 background, 2 border",
        "```", "",
        f"Score any folder of images and trimaps: `unet-ssl evaluate --checkpoint models/{path.name} --images DIR "
        "--trimaps DIR --out scores.json`.", "",
        "## Settings of the run", "", *table(["parameter", "value"], list(flatten(c.settings).items())), "",
    ]
    return "\n".join(lines)


def publish(c: Candidate, out: Path, candidates: list[Candidate]) -> Path:
    """Copies the checkpoint to `out`, proves it loads the safe way, writes the model card."""
    out.mkdir(parents=True, exist_ok=True)
    dest = out / RELEASE_CHECKPOINT
    shutil.copyfile(c.checkpoint, dest)
    if dest.stat().st_size > MAX_BYTES:
        raise ReleaseError(f"{dest} is {dest.stat().st_size / 2 ** 20:.1f} MiB, over the "
                           f"{MAX_BYTES / 2 ** 20:.0f} MiB limit")
    torch.load(dest, map_location="cpu", weights_only=True)
    checkpoint.load_model(dest)
    sha256 = hashlib.sha256(dest.read_bytes()).hexdigest()
    (out / RELEASE_CARD).write_text(model_card(c, candidates, dest, sha256))
    return dest


def log_pyfunc(checkpoint_path: Path) -> str:
    """Logs the pyfunc flavour (unet_ssl/pyfunc_model.py as code, the checkpoint as its artifact) in
    the active MLflow run; returns its model URI. Requirements are pinned to this environment rather
    than inferred (inference loads the model in a subprocess), and the unet_ssl package travels as
    code, so the model serves without the repository."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from PIL import __version__ as pillow_version

    from unet_ssl.tracking import pyfunc_model

    package = Path(pyfunc_model.__file__).parents[1]  # all of unet_ssl: the model code imports the core
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))
    example = np.full((1, EXAMPLE_SIZE, EXAMPLE_SIZE, 3), 128, dtype=np.uint8)
    info = mlflow.pyfunc.log_model(
        name="pets-unet", python_model=pyfunc_model.__file__,
        artifacts={pyfunc_model.CHECKPOINT_ARTIFACT: str(checkpoint_path)}, code_paths=[str(package)],
        signature=signature, input_example=example,
        pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                          f"numpy=={np.__version__}", f"pillow=={pillow_version}", f"pyyaml=={yaml.__version__}"])
    return info.model_uri


def register(checkpoint_path: Path, tags: dict[str, str]) -> ModelVersion:
    """Logs the pyfunc model in a `release` run of the tracking store and registers it as
    `pets-unet`, moving the `champion` alias to the new version; returns the ModelVersion."""
    import mlflow

    from unet_ssl.tracking.mlflow_runs import experiment_id, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(experiment_id=experiment_id(mlflow), run_name="release", tags={"role": "release", **tags}):
        uri = log_pyfunc(checkpoint_path)
    version = mlflow.register_model(uri, REGISTERED_MODEL, tags=tags)
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_MODEL, ALIAS, version.version)
    return version


def run(params: dict, out: Path, include_grid: bool = False) -> Candidate:
    candidates = [c for c in [pipeline_candidate(params)] if c is not None]
    if include_grid:
        candidates += grid_candidates()
    best = choose(candidates)
    dest = publish(best, out, candidates)
    print(f"release: {best.source} -> {dest} (validation Jaccard {number(best.val_jaccard)}, "
          f"test Jaccard {number(best.test['jaccard'])}), model card {out / RELEASE_CARD}")
    version = register(dest, {"source": best.source, "source_run_id": best.mlflow_run_id or "unknown",
                              "sha256": hashlib.sha256(dest.read_bytes()).hexdigest()})
    print(f"release: registered {REGISTERED_MODEL} version {version.version} as @{ALIAS} "
          f"(models:/{REGISTERED_MODEL}@{ALIAS}; pyfunc: photos (N, H, W, 3) uint8 -> trimaps (N, H, W) 1/2/3)")
    return best
