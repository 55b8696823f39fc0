"""The grid of the paper's tables: the plan (cells, shared pretraining, no dots in names), the
profiles, and the DVC grid end to end on the embedded sample with the micro profile, in a temporary
copy of the repository with a real DVC repo and a real MLflow store."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SMALL_PETS, copy_pets, copy_repo
from conftest import run_checked as run

from unet_ssl.config import load_params, pretrains_decoder
from unet_ssl.core.stats import confusion_from_record, confusion_record, dataset_jaccard
from unet_ssl.data.splits import SPLIT_CODES
from unet_ssl.experiments import grid_plan, grid_runs, release
from unet_ssl.experiments.paper_tables import difference

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
GRID_PROFILES = sorted(PROFILES.glob("grid-*.yaml"))
SINGLE_RUN_PROFILES = sorted(set(PROFILES.glob("*.yaml")) - set(GRID_PROFILES))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        nested = isinstance(v, dict) and k not in ("space", "pretrain_overrides")
        out |= keys(v, f"{prefix}{k}.") if nested else {f"{prefix}{k}"}
    return out


# The plan -------------------------------------------------------------------------------------------

def test_the_tables_hold_the_papers_cells_plus_baselines_and_the_multilevel_row():
    t1 = grid_plan.TABLE1.cells
    assert [c.method for c in t1[:4]] == ["simclr", "mae_patch", "mae_pixel", "mae_none"]
    assert all(c.freeze_encoder and c.skip_connections and c.subset == 0.9 for c in t1[:5])
    assert grid_plan.Cell("none", freeze_encoder=False) in t1
    assert grid_plan.Cell("simclr", projection="multi_level") in t1
    t2 = grid_plan.TABLE2.cells
    assert len(t2) == len(set(t2)) == 2 * 4 * 3
    simclr = [c for c in t2 if c.method == "simclr"]
    assert {(c.freeze_encoder, c.skip_connections, c.subset) for c in simclr} == {
        (f, s, sub) for f in (True, False) for s in (True, False) for sub in grid_plan.SUBSETS}
    assert all(grid_plan.paper_value(grid_plan.TABLE2, c)[1] is not None for c in simclr)
    assert grid_plan.paper_value(grid_plan.TABLE2, grid_plan.Cell("simclr", True, False, 0.9)) == (None, 0.469)
    assert grid_plan.paper_value(grid_plan.TABLE1, grid_plan.Cell("mae_patch")) == (0.779, 0.656)
    assert grid_plan.paper_value(grid_plan.TABLE1, grid_plan.Cell("none")) == (None, None)
    # the paper kept the pretraining's batch-norm statistics: our recomputed rows have no paper value
    assert grid_plan.paper_value(grid_plan.TABLE1, grid_plan.Cell("simclr", recompute_bn=True)) == (None, None)


def test_cells_in_both_tables_live_in_shared_and_names_have_no_dots():
    both = set(grid_plan.TABLE1.cells) & set(grid_plan.TABLE2.cells)
    assert both == {grid_plan.Cell("simclr"), grid_plan.Cell("none"), grid_plan.Cell("none", freeze_encoder=False)}
    assert all(grid_plan.home(c) == "shared" for c in both)
    assert grid_plan.home(grid_plan.Cell("mae_pixel")) == "table1"
    assert grid_plan.home(grid_plan.Cell("simclr", subset=0.01)) == "table2"
    names = [c.name for t in grid_plan.TABLES.values() for c in t.cells]
    assert all("." not in n for n in names) and "simclr-frozen-noskip-1" in names


def test_nothing_is_pretrained_twice():
    params = load(PROFILES / "grid-cpu.yaml")
    plan = grid_plan.plan(params)
    seeds = params["grid"]["seeds"]
    # SimCLR trains the encoder only: its skip and no-skip cells share one checkpoint per seed.
    wanted = {(c.method, c.projection, c.skip_connections if pretrains_decoder(c.method) else True)
              for t in grid_plan.TABLES.values() for c in t.cells}
    # and scratch's 3 more seeds (grid.cell_seeds) start from 3 more random initialisations
    assert len(plan["pretrain"]) == len(wanted) * len(seeds) + 3 == 7 * 3 + 3
    users = Counter(e["pretrain"] for e in plan["finetune"].values())
    # Table 2's 12 cells per method, plus Table 1's cell with recomputed batch-norm statistics; the levers
    # table reuses Table 2's SimCLR and scratch cells and adds a trained-encoder MAE cell, the dense one and
    # SimCLR's with an LP-FT warm-up (the same checkpoint, fine-tuned otherwise)
    assert users["simclr-s0"] == 14 and users["mae_patch-s0"] == 3 and users["none-s0"] == 13
    assert users["mae_patch-with_pets-s0"] == 1 and users["mae_patch-with_pets-s3"] == 2  # its LP-FT row: seeds 3-5
    assert users["dense-s0"] == 1 and plan["pretrain"]["dense-s0"]["skip_connections"]
    # the variants' pretraining runs are planned apart, one per variant, method and seed
    assert sorted(plan["pretrain_variant"]) == sorted([
        *(f"{v}-s{s}" for v in ("simclr-all_photos", "simclr-with_pets", "simclr-tuned", "mae_patch-with_pets",
                                "mae_patch-with_pets_longer", "mae_patch-with_pets_masked_loss") for s in seeds),
        *(f"mae_patch-with_pets-s{s}" for s in (3, 4, 5))])  # the cell with its own seeds (grid.cell_seeds)
    assert plan["pretrain_variant"]["simclr-all_photos-s0"] | {"pretrain": None} == {
        "seed": 0, "skip_connections": True, "pretrain": None, "variant": "all_photos", "photos": 0,
        "training_pets": False}
    assert plan["pretrain_variant"]["simclr-all_photos-s0"]["pretrain"]["epochs"] == 2
    assert plan["pretrain_variant"]["simclr-tuned-s0"]["pretrain"]["temperature"] != params["pretrain"]["temperature"]
    longer, shorter = (plan["pretrain_variant"][f"mae_patch-{v}-s0"] for v in ("with_pets_longer", "with_pets"))
    assert longer["training_pets"] and longer["pretrain"]["epochs"] == 4 * shorter["pretrain"]["epochs"]
    masked_loss = plan["pretrain_variant"]["mae_patch-with_pets_masked_loss-s0"]
    assert masked_loss["pretrain"] == shorter["pretrain"] | {"masked_only_loss": True} and masked_loss["training_pets"]
    runs = plan["pretrain"] | plan["pretrain_variant"]
    for entry in plan["finetune"].values():
        pre = runs[entry["pretrain"]]
        assert pre["seed"] == entry["seed"]
        assert pre["pretrain"]["method"] == grid_plan.cell_by_name(entry["cell"]).method
    assert len(plan["finetune"]) == (12 + 24 - 3 + 10) * 3 + 2 * 3  # two cells with 3 more seeds, one with others


def test_cells_with_their_own_seeds_get_those_runs_and_their_pretraining():
    """`grid.cell_seeds` narrows one comparison's interval without running every cell again."""
    params = load(PROFILES / "grid-cpu.yaml")
    more = {"none-trained-skip-90": [0, 1, 2, 3, 4, 5], "mae_patch-with_pets-trained-skip-90": [0, 1, 2, 3, 4, 5],
            "mae_patch-with_pets-trained-warmup2-skip-90": [3, 4, 5]}  # other seeds, not more
    assert params["grid"]["cell_seeds"] == more
    plan = grid_plan.plan(params)
    assert {k for k in plan["finetune"] if k.startswith("mae_patch-with_pets-trained-warmup2-")} == {
        f"mae_patch-with_pets-trained-warmup2-skip-90-s{seed}" for seed in (3, 4, 5)}
    assert {k for k in plan["finetune"] if k.endswith(("-s3", "-s4", "-s5"))} == {
        f"{cell}-s{seed}" for cell in more for seed in (3, 4, 5)}
    assert {k for k in plan["pretrain_variant"] if k.endswith("-s5")} == {"mae_patch-with_pets-s5"}
    assert plan["finetune"]["none-trained-skip-90-s5"]["dir"] == "shared/none-trained-skip-90/s5"
    assert "mae_patch-with_pets_longer-trained-skip-90-s3" not in plan["finetune"]  # the others keep `seeds`
    params["grid"]["cell_seeds"] = {"simclr-frozen-skip-45": [3]}
    with pytest.raises(ValueError, match=r"grid.cell_seeds: no table holds \['simclr-frozen-skip-45'\]"):
        grid_plan.plan(params)


def test_levers_fine_tune_alike_and_keep_the_paper_tables_folders():
    """The levers' rows differ in their starting weights, and the LP-FT rows in when the encoder starts
    training (the same epochs for all); cells the paper tables hold stay where those tables' runs are, so
    adding the levers table moves no run."""
    cells = grid_plan.LEVERS.cells
    assert {(c.freeze_encoder, c.skip_connections, c.subset, c.recompute_bn) for c in cells} == {(False, True, 0.9,
                                                                                                  False)}
    warm = grid_plan.Cell("simclr", False, warmup_epochs=2)
    assert warm in cells and warm.name == "simclr-trained-warmup2-skip-90" and grid_plan.home(warm) == "levers"
    with pytest.raises(ValueError, match="encoder trained afterwards"):
        grid_plan.Cell("simclr", warmup_epochs=2)
    levers = load(PROFILES / "grid-cpu.yaml")
    runs = grid_plan.plan(levers)["finetune"]
    assert runs[f"{warm.name}-s0"]["finetune"]["warmup_epochs"] == 2
    assert runs[f"{warm.name}-s0"]["finetune"]["epochs"] == runs["none-trained-skip-90-s0"]["finetune"]["epochs"]
    assert runs["simclr-trained-skip-90-s0"]["finetune"]["warmup_epochs"] == 0
    # records made before the setting existed ran without a warm-up: they still match their plan entries
    recorded = {k: v for k, v in runs["simclr-trained-skip-90-s0"]["finetune"].items() if k != "warmup_epochs"}
    assert grid_runs.same_finetuning(recorded, runs["simclr-trained-skip-90-s0"]["finetune"])
    assert not grid_runs.same_finetuning(recorded, runs[f"{warm.name}-s0"]["finetune"])
    assert grid_plan.home(grid_plan.Cell("simclr", freeze_encoder=False)) == "table2"
    assert grid_plan.home(grid_plan.Cell("none", freeze_encoder=False)) == "shared"
    assert grid_plan.home(grid_plan.Cell("mae_patch", False, variant="with_pets")) == "levers"
    assert grid_plan.Cell("mae_patch", False, variant="with_pets").name == "mae_patch-with_pets-trained-skip-90"
    with pytest.raises(ValueError, match="needs a pretraining method"):
        grid_plan.Cell("none", variant="with_pets")
    params = load(PROFILES / "grid-micro.yaml")
    params["grid"]["cells"] = [n for n in params["grid"]["cells"] if n != "simclr-trained-skip-90"]
    with pytest.raises(ValueError, match=r"compares its rows with \['simclr-trained-skip-90'\]"):
        grid_plan.plan(params)
    params["grid"] |= {"tables": ["levers"], "cells": [], "pretrain_variants": {"with_pets": {"photos": 8}}}
    with pytest.raises(ValueError, match="has no 'all_photos'"):
        grid_plan.plan(params)
    params["grid"]["pretrain_variants"] = {v: {"epoch": 3} for v in ("all_photos", "with_pets", "tuned")}
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        grid_plan.plan(params)


def test_the_levers_stage_depends_on_its_own_runs_and_its_baselines_folders_only():
    """Not on whole paper tables: a levers run must not wait on (or rerun) Table 2's other 57 runs."""
    deps = yaml.safe_load((REPO / "grid" / "dvc.yaml").read_text())["stages"]["levers"]["deps"]
    runs = {d for d in deps if d.startswith("grid/runs/")}
    assert runs == {"grid/runs/levers"} | {f"grid/runs/{grid_plan.home(c)}/{c.name}"
                                            for c in grid_plan.levers_baselines()}
    assert [c.name for c in grid_plan.levers_baselines()] == ["none-trained-skip-90", "simclr-trained-skip-90"]


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_a_paper_table_depends_on_its_run_folders_only(table):
    """Not on grid/pretrain as a whole: `make table1` must not pretrain the levers' dense runs kept there."""
    deps = yaml.safe_load((REPO / "grid" / "dvc.yaml").read_text())["stages"][table]["deps"]
    grid_deps = {d for d in deps if d.startswith("grid/")}
    assert grid_deps == {f"grid/runs/{table}", "grid/runs/shared", "grid/data/pets"}
    assert {grid_plan.home(c) for c in grid_plan.TABLES[table].cells} == {table, "shared"}


def test_mae_cells_without_skips_get_their_own_pretraining():
    cell = grid_plan.Cell("mae_patch", skip_connections=False)
    assert cell.pretrain_key(1) == "mae_patch-noskip-s1" != grid_plan.Cell("mae_patch").pretrain_key(1)
    assert grid_plan.Cell("simclr", skip_connections=False).pretrain_key(1) == grid_plan.Cell("simclr").pretrain_key(1)


def test_per_method_overrides_apply_only_to_that_method():
    params = load(PROFILES / "grid-paper.yaml")
    plan = grid_plan.plan(params)["pretrain"]
    assert plan["simclr-s0"]["pretrain"]["image_size"] == 64 and plan["simclr-s0"]["pretrain"]["batch_size"] == 384
    assert plan["mae_patch-s0"]["pretrain"]["image_size"] == 128
    assert plan["mae_patch-s0"]["pretrain"]["mask_patch"] == 20
    assert plan["simclr-multilevel-s0"]["pretrain"]["projection"] == "multi_level"
    assert plan["none-s0"]["pretrain"] == {"method": "none", "projection": "bottleneck"}


def test_cell_filter_and_unknown_names():
    params = load(PROFILES / "grid-micro.yaml")
    assert sorted(e["cell"] for e in grid_plan.plan(params)["finetune"].values()) == sorted(params["grid"]["cells"])
    with pytest.raises(ValueError, match="no table holds"):
        grid_plan.selected_cells({"tables": ["table1"], "cells": ["simclr-frozen-skip-50"]})


# Profiles and the committed params file --------------------------------------------------------------

def test_the_committed_grid_params_are_the_cpu_profile_with_its_plan(tmp_path):
    committed = (REPO / "grid" / "params.json").read_text()
    regenerated = grid_runs.use_profile(Path(json.loads(committed)["profile"]), tmp_path / "params.json")
    assert regenerated["profile"] == "profiles/grid-cpu.yaml"
    assert committed == (tmp_path / "params.json").read_text()  # byte for byte, as `unet-ssl grid use` writes it


def test_a_stale_plan_or_profile_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy2(PROFILES / "grid-micro.yaml", tmp_path / "p.yaml")
    params = grid_runs.use_profile(Path("p.yaml"), tmp_path / "params.json")
    grid_runs.check_plan(params)
    params["grid"]["seeds"] = [0, 1]
    with pytest.raises(ValueError, match="out of date"):
        grid_runs.check_plan(params)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({k: v for k, v in params.items() if k not in ("profile", "plan")}))
    with pytest.raises(ValueError, match="stale plan"):
        grid_runs.check_plan(params)


def test_results_ignore_a_record_of_another_profile_in_a_planned_folder(tmp_path, monkeypatch):
    """After `grid use` of another profile, a record left in a folder the new plan uses too (a committed 64-px
    grid-cpu run where the release profile plans its 128-px SimCLR run) is no result of the new grid."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(PROFILES, "profiles")
    folder = Path("grid/runs/table2/simclr-trained-skip-90/s0")
    folder.mkdir(parents=True)
    shutil.copy2(REPO / folder / "result.json", folder / "result.json")
    cpu = grid_runs.use_profile(Path("profiles/grid-cpu.yaml"), tmp_path / "cpu.yaml")
    release_params = grid_runs.use_profile(Path("profiles/grid-release-cpu.yaml"), tmp_path / "release.yaml")
    assert release_params["plan"]["finetune"]["simclr-trained-skip-90-s0"]["dir"] == "table2/simclr-trained-skip-90/s0"
    assert list(grid_runs.results(cpu)["key"]) == ["simclr-trained-skip-90-s0"]
    assert grid_runs.results(release_params).empty


@pytest.mark.parametrize("profile", SINGLE_RUN_PROFILES, ids=lambda p: p.name)
def test_single_run_profiles_have_exactly_the_settings_of_params_yaml(profile):
    assert keys(load(profile)) == keys(load(REPO / "params.yaml"))


@pytest.mark.parametrize("profile", GRID_PROFILES, ids=lambda p: p.name)
def test_grid_profiles_have_the_pipeline_groups_and_a_grid_section(profile):
    params, main = load(profile), load(REPO / "params.yaml")
    for group in ("data", "pretrain", "finetune", "evaluate", "runtime"):
        assert keys(params[group]) == keys(main[group]), group
    assert params["data"]["image_size"] == params["finetune"]["image_size"]
    assert set(params["grid"]) == {"tables", "cells", "seeds", "cell_seeds", "pretrain_overrides", "resolutions",
                                   "examples", "finetune_runtime", "pretrain_variants"}
    grid_plan.plan(params)


def test_the_paper_profile_has_the_papers_settings():
    paper, grid_paper = load(PROFILES / "paper.yaml"), load(PROFILES / "grid-paper.yaml")
    for p in (paper, grid_paper):
        assert (p["pretrain"]["epochs"], p["finetune"]["epochs"]) == (20, 20)
        assert (p["pretrain"]["batch_size"], p["finetune"]["batch_size"]) == (384, 256)
        assert (p["pretrain"]["image_size"], p["finetune"]["image_size"], p["data"]["image_size"]) == (64, 128, 128)
        assert p["pretrain"]["lr"] == p["finetune"]["lr"] == 0.001 and p["finetune"]["augment"] == "none"
        assert (p["pretrain"]["temperature"], p["pretrain"]["mask_patch"], p["pretrain"]["mask_ratio"]) == (
            0.2, 20, 0.75)
    overrides = grid_paper["grid"]["pretrain_overrides"]
    assert all(overrides[m]["image_size"] == 128 for m in ("mae_patch", "mae_pixel", "mae_none"))
    assert grid_paper["grid"]["seeds"] == [0, 1, 2] and grid_paper["data"]["pretrain_limit"] == 0


# Comparisons in the tables -------------------------------------------------------------------------

def run_records(cell: grid_plan.Cell, errors: dict[int, float], per_image: bool = True) -> list[dict]:
    """Records of a cell's runs (seed -> share of wrong pixels) as the grid writes them, with or
    without the per-image confusion matrices of earlier grid versions."""
    target = torch.randint(0, 3, (20, 16, 16), generator=torch.Generator().manual_seed(0))
    out = []
    for seed, error in errors.items():
        g = torch.Generator().manual_seed(seed)
        pred = torch.where(torch.rand(target.shape, generator=g) < error, (target + 1) % 3, target)
        matrices = torch.stack([torch.bincount((t * 3 + p).reshape(-1), minlength=9).reshape(3, 3)
                                for p, t in zip(pred, target)])
        record = {"cell": cell.name, "seed": seed, "jaccard": float(dataset_jaccard(matrices.sum(0).numpy()))}
        out.append(record | ({"test_confusion": confusion_record(torch.arange(20), matrices)} if per_image else {}))
    return out


def test_table_comparisons_are_paired_by_seed_with_an_interval_or_say_there_is_none():
    import pandas as pd

    pretrained, scratch = grid_plan.Cell("simclr"), grid_plan.Cell("none", freeze_encoder=False)
    frame = pd.DataFrame(run_records(pretrained, {0: 0.1, 1: 0.12, 2: 0.11})
                         + run_records(scratch, {0: 0.3, 1: 0.28, 7: 0.1}))
    clear = difference(frame, pretrained, scratch)  # seeds 0 and 1 only: seed 2 and 7 have no partner
    assert clear.endswith(", better)") and "(95% CI +" in clear
    paired = frame[frame["seed"].isin([0, 1])].groupby("cell")["jaccard"].mean()
    assert clear.startswith(f"{paired[pretrained.name] - paired[scratch.name]:+.3f} (")
    assert difference(frame, scratch, pretrained).endswith(", worse)")
    assert difference(frame, pretrained, grid_plan.Cell("mae_patch")) == "—"
    old = pd.DataFrame(run_records(pretrained, {0: 0.1}, per_image=False) + run_records(scratch, {0: 0.3}))
    assert difference(old, pretrained, scratch).endswith(", no interval (per-image scores not recorded)")
    assert "better" not in difference(old, pretrained, scratch)


def test_validation_comparisons_read_the_validation_matrices():
    import pandas as pd

    def runs(cell: grid_plan.Cell, test_errors: dict[int, float], val_errors: dict[int, float]) -> list[dict]:
        val = run_records(cell, val_errors)
        return [t | {"val_confusion": v["test_confusion"]} for t, v in zip(run_records(cell, test_errors), val)]

    pretrained, scratch = grid_plan.Cell("simclr", False), grid_plan.Cell("none", freeze_encoder=False)
    frame = pd.DataFrame(runs(pretrained, {0: 0.3, 1: 0.28}, {0: 0.1, 1: 0.12})
                         + runs(scratch, {0: 0.1, 1: 0.12}, {0: 0.3, 1: 0.28}))
    assert difference(frame, pretrained, scratch, "val").endswith(", better)")
    assert difference(frame, pretrained, scratch).endswith(", worse)")


# End to end on the sample ----------------------------------------------------------------------------

def mlflow_runs(repo: Path, stage: str) -> list[dict]:
    """Tags of every finished stage run of `stage` in the temporary repository's MLflow store."""
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:
        ids = [r[0] for r in db.execute("select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                                        "where t.key = 'stage' and t.value = ? and r.status = 'FINISHED'", (stage,))]
        return [dict(db.execute("select key, value from tags where run_uuid = ?", (i,)).fetchall()) | {"run_id": i}
                for i in ids]


def make_grid_repo(repo: Path, grid_overrides: dict | None = None) -> tuple[Path, dict]:
    """A copy of the repository in `repo` with the sample as data and the micro profile (its `grid`
    section updated with `grid_overrides`) in use, committed; nothing run yet."""
    repo.mkdir(parents=True)
    copy_repo(repo)
    for generated in ("grid/dvc.lock", "grid/data", "grid/pretrain", "dvc.lock", "data.dvc"):
        path = repo / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for run_dir in (repo / "grid" / "runs").glob("*/*"):
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q"], repo, env)
    run(["unet-ssl", "data", "sample"], repo, env)
    profile = load(repo / "profiles" / "grid-micro.yaml")
    profile["grid"] |= grid_overrides or {}
    (repo / "profiles" / "grid-micro.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    run(["unet-ssl", "grid", "use", "profiles/grid-micro.yaml"], repo, env)
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "micro grid"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def grid_repo(tmp_path_factory):
    """The micro grid (six cells, one seed) with Table 1 made."""
    repo, env = make_grid_repo(tmp_path_factory.mktemp("grid") / "repo")
    out = run(["dvc", "repro", "grid/dvc.yaml:table1"], repo, env)
    return repo, env, out


def test_table1_is_generated_from_runs_that_are_tagged_in_mlflow(grid_repo):
    repo, env, out = grid_repo
    params = load_params(repo / "grid" / "params.json")  # as the grid stages read it
    table1_cells = {c.name for c in grid_plan.TABLE1.cells} & set(params["grid"]["cells"])
    finetuned = mlflow_runs(repo, "grid_finetune")
    assert sorted(r["grid_cell"] for r in finetuned) == sorted(table1_cells)
    for tags in finetuned:
        cell = grid_plan.cell_by_name(tags["grid_cell"])
        assert (tags["method"], tags["freeze_encoder"], tags["skip_connections"], tags["subset"], tags["seed"]) == (
            cell.method, str(cell.freeze_encoder), str(cell.skip_connections), str(cell.subset), "0")
        record = json.loads((repo / "grid" / "runs" / grid_plan.home(cell) / cell.name / "s0" / "result.json")
                            .read_text())
        assert record["mlflow_run_id"] == tags["run_id"] and 0 <= record["test"]["jaccard"] <= 1
        index, per_image = confusion_from_record(record["test_confusion"])
        assert len(index) == len(per_image) == record["test"]["n_images"]
        assert dataset_jaccard(per_image.sum(0)) == pytest.approx(record["test"]["jaccard"])
    assert sorted(r["grid_run"] for r in mlflow_runs(repo, "grid_pretrain")) == ["mae_patch-s0", "none-s0", "simclr-s0"]
    report = (repo / "reports" / "table1.md").read_text()
    assert "| SimCLR | 1 |" in report and "| MAE, pixel masking | 0 | not run" in report
    assert "36 labelled pets of 3 breeds" in report and "profiles/grid-micro.yaml" in report
    assert "0.650" in report and "0.656" in report  # the paper's values beside ours
    simclr = next(line for line in report.splitlines() if line.startswith("| SimCLR | 1 |"))
    assert "(95% CI " in simclr and "2 SE" not in report
    for figure in ("table1_figures/learning_curves.png", "table1_figures/predictions.png",
                   "table1_figures/pretraining_loss.png", "mae_reconstructions.png"):
        assert (repo / "reports" / figure).stat().st_size > 5000, figure


def test_table2_reuses_the_pretrained_checkpoints_and_the_shared_runs(grid_repo):
    repo, env, _ = grid_repo
    checkpoint = repo / "grid" / "pretrain" / "simclr-s0" / "pretrained.pt"
    before = checkpoint.read_bytes()
    out = run(["dvc", "repro", "grid/dvc.yaml:table2", "grid/dvc.yaml:resolution"], repo, env)
    assert "Running stage 'grid/dvc.yaml:finetune@simclr-trained-noskip-1-s0'" in out
    assert "Running stage 'grid/dvc.yaml:pretrain@" not in out
    assert "Running stage 'grid/dvc.yaml:finetune@simclr-frozen-skip-90-s0'" not in out
    assert len(mlflow_runs(repo, "grid_pretrain")) == 3 and checkpoint.read_bytes() == before
    assert "Running stage 'grid/dvc.yaml:finetune@simclr-trained-skip-90-s0'" in out
    assert len(mlflow_runs(repo, "grid_finetune")) == 5
    report = (repo / "reports" / "table2.md").read_text()
    assert "(paper 0.467)" in report and "| none (baseline), trained encoder, skips | 0." in report
    assert (repo / "reports" / "table2_figures" / "jaccard_vs_subset.png").stat().st_size > 5000
    resolution = (repo / "reports" / "resolution.md").read_text()
    assert "64 px (trained)" in resolution and "| none-trained-skip-90 | 0." in resolution
    scores = json.loads((repo / "grid" / "resolution.json").read_text())
    assert set(scores) == {"simclr-frozen-skip-90", "mae_patch-frozen-skip-90", "none-trained-skip-90",
                           "simclr-trained-skip-90"}
    # each species' test pets scored on their own at every size (a species the test split lacks is left out)
    assert "## Per species: dataset-level Jaccard, cats / dogs" in resolution
    at_64 = scores["none-trained-skip-90"]["s0"]["64px"]
    species = {k: v for k, v in at_64.items() if k.endswith("_jaccard") and k != "paper_jaccard"}
    assert species and set(species) <= {"cat_jaccard", "dog_jaccard"} and all(0 <= v <= 1 for v in species.values())


def test_levers_pretrain_on_their_own_photos_and_compare_on_validation_and_test(grid_repo, tmp_path, monkeypatch):
    repo, env, _ = grid_repo
    out = run(["dvc", "repro", "grid/dvc.yaml:levers"], repo, env)
    assert "Running stage 'grid/dvc.yaml:pretrain_variant@simclr-with_pets-s0'" in out
    assert "Running stage 'grid/dvc.yaml:finetune@none-trained-skip-90-s0'" not in out  # Table 1's run, reused
    pets = torch.load(repo / "grid" / "data" / "pets" / "pets.pt", weights_only=True)
    n_train = int((pets["split"] == SPLIT_CODES["train"]).sum())
    record = json.loads((repo / "grid" / "pretrain_variants" / "simclr-with_pets-s0" / "pretrain.json").read_text())
    assert record["n_images"] == 64 + n_train > 64  # 64 raw photos and the training split's pets, nothing else
    monkeypatch.chdir(repo)
    params = load_params(repo / "grid" / "params.json")  # as the grid stages read it
    photos = torch.load(grid_runs.variant_photos(params, params["plan"]["pretrain_variant"]["simclr-with_pets-s0"],
                                                 tmp_path), weights_only=True)["images"]
    assert torch.equal(photos[64:], pets["images"][pets["split"] == SPLIT_CODES["train"]])
    candidates = {c.source: c for c in release.grid_candidates()}  # a model card says what a variant pretrained on
    assert candidates["grid run simclr-with_pets-trained-skip-90-s0"].pretrained_on == (
        f"{64 + n_train} photos (64 of the raw photos + the training split's pets, unlabelled; variant `with_pets`)")
    assert candidates["grid run none-trained-skip-90-s0"].pretrained_on == ""
    tags = next(r for r in mlflow_runs(repo, "grid_pretrain") if r["grid_run"] == "simclr-with_pets-s0")
    assert tags["variant"] == "with_pets"
    result = json.loads((repo / "grid" / "runs" / "levers" / "simclr-with_pets-trained-skip-90" / "s0" / "result.json")
                        .read_text())
    index, per_image = confusion_from_record(result["val_confusion"])
    assert len(index) == len(per_image) == result["n_val"]
    assert (pets["split"][torch.tensor(index)] == SPLIT_CODES["val"]).all()
    report = (repo / "reports" / "levers.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| SimCLR + the training split's pets"))
    assert "| 1 |" in row and row.count("(95% CI ") == 2 and f"{64 + n_train} × 1 epochs" in row
    assert "| none: trained from scratch (baseline) | 1 |" in report and "He et al. (2022)" in report
    assert "up to date" in run(["dvc", "status", "grid/dvc.yaml"], repo, env)
    assert "Not in the predictions" not in report


def test_a_table_names_the_cells_whose_checkpoint_is_absent_instead_of_failing(grid_repo, tmp_path):
    """Checkpoints are DVC outputs: a clone without the cache that made them still regenerates the report."""
    repo, env, _ = grid_repo
    run(["dvc", "repro", "grid/dvc.yaml:levers"], repo, env)
    cell = grid_plan.cell_by_name("none-trained-skip-90")
    saved = repo / "grid" / "runs" / grid_plan.home(cell) / cell.name / "s0" / "finetuned.pt"
    kept = {p: p.read_bytes() for p in [saved, *(repo / "reports").glob("levers*"),
                                        *(repo / "reports" / "levers_figures").iterdir()] if p.is_file()}
    saved.unlink()
    try:
        run(["unet-ssl", "grid", "table", "levers"], repo, env)
        report = (repo / "reports" / "levers.md").read_text()
        assert "Not in the predictions: none-trained-skip-90: their first-seed checkpoints" in report
    finally:
        for path, data in kept.items():
            path.write_bytes(data)


def test_plain_dvc_repro_at_the_root_does_not_touch_the_grid(grid_repo, monkeypatch):
    """What `dvc repro` without targets would run, planned the way it plans it (targets: ./dvc.yaml)."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    repo, _, _ = grid_repo
    monkeypatch.chdir(repo)
    with Repo(".") as dvc_repo:
        graph = get_active_graph(dvc_repo.index.graph)
        planned = plan_repro(graph, collect_stages(dvc_repo, ["dvc.yaml"]))
        everything = {s.addressing for s in graph}
    names = {s.addressing for s in planned}
    assert {"prepare_pets", "finetune", "report"} <= names
    assert not any(n.startswith("grid/") for n in names) and any(n.startswith("grid/") for n in everything)


def test_release_publishes_the_best_grid_model_with_a_model_card(grid_repo, tmp_path):
    repo, env, _ = grid_repo
    out = tmp_path / "models"
    run(["unet-ssl", "release", "--from-grid", "--out", str(out)], repo, env)
    model = out / "pets-unet.pt"
    assert model.stat().st_size <= 10 * 2 ** 20
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    card = (out / "README.md").read_text()
    run_ids = {r["run_id"]: r for r in mlflow_runs(repo, "grid_finetune")}
    chosen = next(i for i in run_ids if i in card)
    cell = run_ids[chosen]["grid_cell"]
    home = grid_plan.home(grid_plan.cell_by_name(cell))
    record = json.loads((repo / "grid" / "runs" / home / cell / "s0" / "result.json").read_text())
    best_val = max(max(h["val_jaccard"] for h in json.loads(p.read_text())["history"])
                   for p in (repo / "grid" / "runs").glob("*/*/s0/result.json"))
    assert max(h["val_jaccard"] for h in ckpt["history"]) == best_val
    assert f"{record['test']['jaccard']:.3f}" in card and "profiles/grid-micro.yaml" in card
    assert "## Against the alternative" in card and "paired by seed (seeds 0): " in card and "(95% CI " in card
    # per species, validation beside test: the validation pets of the chosen run's record, each species apart
    rows = [line.split(" | ") for line in card.splitlines() if line.startswith(("| cats |", "| dogs |"))]
    n_val = sum(int(r[1]) for r in rows)
    assert len(rows) == 2 and n_val == record["n_val"] == len(confusion_from_record(record["val_confusion"])[0])
    pets = copy_pets(tmp_path / "folder", SMALL_PETS)
    run(["unet-ssl", "evaluate", "--checkpoint", str(model), "--images", str(pets / "images"),
         "--trimaps", str(pets / "annotations" / "trimaps"), "--out", str(tmp_path / "scores.json")], repo, env)
    assert json.loads((tmp_path / "scores.json").read_text())["n_images"] == len(SMALL_PETS)


def test_the_model_card_compares_with_the_alternative_paired_by_seed_or_says_why_not(tmp_path, monkeypatch):
    from unet_ssl.paths import FINETUNED, PETS, PREDICTIONS, PREPARED

    monkeypatch.chdir(tmp_path)
    target = torch.randint(0, 3, (12, 16, 16), generator=torch.Generator().manual_seed(0))

    def candidate(method: str, seed: int, error: float, per_image: bool = True) -> release.Candidate:
        wrong = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed)) < error
        pred = torch.where(wrong, (target + 1) % 3, target)
        folder = tmp_path / "grid" / method / f"s{seed}"
        folder.mkdir(parents=True)
        saved = {"test_confusion": confusion_record(torch.arange(12), torch.stack(
            [torch.bincount((t * 3 + p).reshape(-1), minlength=9).reshape(3, 3) for p, t in zip(pred, target)]))}
        (folder / "result.json").write_text(json.dumps(saved if per_image else {}))
        settings = {"seed": seed, "pretrain": {"method": method}, "finetune": {"freeze_encoder": False}}
        return release.Candidate(f"grid run {method}-s{seed}", folder / "finetuned.pt", 0.5 + (method == "simclr") / 10,
                                 {"jaccard": 1 - error}, settings, "p", Path("grid/data"), None)

    pretrained = [candidate("simclr", s, 0.1) for s in (0, 1)]
    scratch = [candidate("none", s, 0.4) for s in (0, 1)]
    lines = "\n".join(release.comparison_lines(pretrained[0], pretrained + scratch))
    assert ("validation Jaccard 0.600 against 0.500 for the best candidate trained from scratch (grid run none-s0)"
            in lines)
    assert "paired by seed (seeds 0, 1): +" in lines and "(95% CI +" in lines and ", better)" in lines
    old = candidate("none", 2, 0.4, per_image=False)
    lines = "\n".join(release.comparison_lines(old, [old, candidate("simclr", 2, 0.1)]))
    assert "no interval (per-image scores not recorded)" in lines
    PETS.parent.mkdir(parents=True)
    torch.save({"masks": target}, PETS)
    PREDICTIONS.parent.mkdir(parents=True)
    torch.save({"index": torch.arange(3), "pred": target[:3].to(torch.uint8)}, PREDICTIONS)
    main = release.Candidate("main pipeline", FINETUNED, 0.7, {"jaccard": 1.0}, {**scratch[0].settings, "seed": 0},
                             "p", PREPARED, None)
    index, per_image = release.candidate_per_image(main)
    assert index.tolist() == [0, 1, 2] and dataset_jaccard(per_image.sum(0)) == 1.0
    lines = "\n".join(release.comparison_lines(main, [main, *pretrained]))
    assert "no paired comparison is available (different test data)" in lines
    assert "No candidate pretrained" in "\n".join(release.comparison_lines(main, [main]))


@pytest.mark.slow
def test_every_cell_of_both_tables_with_two_seeds(tmp_path):
    """Both paper tables whole (33 cells x 2 seeds, micro settings): every row filled with mean ± std."""
    repo, env = make_grid_repo(tmp_path / "repo", {"tables": ["table1", "table2"], "cells": [], "seeds": [0, 1]})
    out = run(["dvc", "repro", "grid/dvc.yaml:table1", "grid/dvc.yaml:table2", "grid/dvc.yaml:resolution"], repo, env)
    assert out.count("Running stage 'grid/dvc.yaml:pretrain@") == 6 * 2
    cells = set(grid_plan.TABLE1.cells) | set(grid_plan.TABLE2.cells)  # 3 cells sit in both tables
    assert out.count("Running stage 'grid/dvc.yaml:finetune@") == len(cells) * 2
    for table in grid_plan.PAPER_TABLES:
        report = (repo / "reports" / f"{table.name}.md").read_text()
        assert "not run" not in report
        for row in table.rows:
            line = next(line for line in report.splitlines() if line.startswith(f"| {row.label} |"))
            assert line.count(" ± ") >= len(row.cells), line
    assert len(mlflow_runs(repo, "grid_finetune")) == len(cells) * 2 and len(mlflow_runs(repo, "grid_pretrain")) == 12
