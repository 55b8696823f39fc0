"""Data checks: the great-expectations suites of the `validate` stage run here on the bundled sample
(always) and on data/raw (when present), and each kind of broken manifest makes exactly the
expected expectation fail; the stage then writes a readable report naming it and exits 1."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, SAMPLE, SMALL_PETS, run_cli

from unet_ssl.data.expectations import pets_suites, pretrain_suites, run_suite
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain

SMALL = {"image_size": 32, "pretrain_image_size": 32}


def repo_data_params() -> dict:
    return {**yaml.safe_load((REPO / "params.yaml").read_text())["data"], **SMALL}


def prepared(raw_dir: Path, out: Path, data: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (prepare_pets(raw_dir, out / "pets", data, data["split_seed"]),
            prepare_pretrain(raw_dir, out / "pretrain", data, data["split_seed"]))


def failures(rows: list[dict]) -> set[tuple[str, str, str]]:
    return {(r["suite"], r["expectation"], r["column"]) for r in rows if not r["success"]}


def all_rows(pets: pd.DataFrame, pretrain: pd.DataFrame, data: dict) -> list[dict]:
    return [row for suite in pets_suites(pets, data) + pretrain_suites(pretrain) for row in run_suite(suite)]


@pytest.fixture(scope="module")
def sample_prepared(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame, dict]:
    """The whole bundled sample, prepared with the repository's data params (at 32px)."""
    out = tmp_path_factory.mktemp("sample_prepared")
    data = repo_data_params()
    pets, pretrain = prepared(SAMPLE, out, data)
    return out, pets, pretrain, data


def test_suites_pass_on_the_bundled_sample(sample_prepared):
    _, pets, pretrain, data = sample_prepared
    rows = all_rows(pets, pretrain, data)
    assert failures(rows) == set()
    checked = {(r["expectation"], r["column"]) for r in rows}
    for check in [("expect_column_values_to_be_between", "splits_of_photo"),
                  ("expect_column_pair_values_to_be_equal", "width,mask_width"),
                  ("expect_column_values_to_be_in_set", "mode"),
                  ("expect_column_values_to_match_regex", "trimap_values"),
                  ("expect_column_values_to_match_regex", "class_values"),
                  ("expect_column_values_to_be_between", "count"),
                  ("expect_column_values_to_be_between", "train_images_with_class"),
                  ("expect_column_values_to_not_be_null", "mask_file")]:
        assert check in checked


@pytest.mark.skipif(not (REPO / "data" / "raw" / "oxford-iiit-pet").is_dir(), reason="no data/raw in this checkout")
def test_suites_pass_on_data_raw(tmp_path):
    data = repo_data_params()
    pets, pretrain = prepared(REPO / data["raw_dir"], tmp_path, data)
    assert failures(all_rows(pets, pretrain, data)) == set()


def copy_split(pets: pd.DataFrame, source: str, target: str) -> pd.DataFrame:
    """A train image's sha256 replaced by a test image's: the same photo in two splits."""
    src = pets.index[pets["split"] == source][0]
    dst = pets.index[pets["split"] == target][0]
    pets.loc[dst, "sha256"] = pets.loc[src, "sha256"]
    return pets


BROKEN = {
    "same_photo_in_train_and_test": (lambda m: copy_split(m, "test", "train"),
                                     ("pets_manifest", "expect_column_values_to_be_between", "splits_of_photo")),
    "trimap_value_5": (lambda m: m.assign(trimap_values=m["trimap_values"].mask(m.index == 3, "1 2 5")),
                       ("pets_manifest", "expect_column_values_to_match_regex", "trimap_values")),
    "class_value_3": (lambda m: m.assign(class_values=m["class_values"].mask(m.index == 4, "0 1 3")),
                      ("pets_manifest", "expect_column_values_to_match_regex", "class_values")),
    "no_border_in_train": (lambda m: m.assign(border_fraction=m["border_fraction"].mask(m["split"] == "train", 0.0)),
                           ("pets_class_presence", "expect_column_values_to_be_between", "train_images_with_class")),
    "mask_width_differs": (lambda m: m.assign(mask_width=m["mask_width"].mask(m.index == 2, m["mask_width"] + 1)),
                           ("pets_manifest", "expect_column_pair_values_to_be_equal", "width,mask_width")),
    "mode_not_converted": (lambda m: m.assign(mode=m["mode"].mask(m.index == 1, "CMYK")),
                           ("pets_manifest", "expect_column_values_to_be_in_set", "mode")),
    "split_sizes_off": (lambda m: m.assign(split=m["split"].mask(m["split"] == "val", "train")),
                        ("pets_split_sizes", "expect_column_values_to_be_between", "count")),
    "mask_missing": (lambda m: m.assign(mask_file=m["mask_file"].mask(m.index == 0, None)),
                     ("pets_manifest", "expect_column_values_to_not_be_null", "mask_file")),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_each_broken_manifest_fails_exactly_its_expectation(sample_prepared, breakage):
    _, pets, _, data = sample_prepared
    breaker, expected = BROKEN[breakage]
    rows = [row for suite in pets_suites(breaker(pets.copy()), data) for row in run_suite(suite)]
    assert failures(rows) == {expected}


def test_failure_details_name_the_rows(sample_prepared):
    _, pets, _, data = sample_prepared
    broken = copy_split(pets.copy(), "test", "train")
    rows = [row for suite in pets_suites(broken, data) for row in run_suite(suite)]
    (failed,) = [r for r in rows if not r["success"]]
    names = pets.loc[[pets.index[pets["split"] == "test"][0], pets.index[pets["split"] == "train"][0]], "name"]
    assert all(f"name={name}" in failed["details"] for name in names)


def test_a_missing_column_fails_with_the_reason(sample_prepared):
    _, pets, _, data = sample_prepared
    rows = [row for suite in pets_suites(pets.drop(columns=["mode"]), data) for row in run_suite(suite)]
    (failed,) = [r for r in rows if not r["success"]]
    assert (failed["column"], failed["details"]) == ("mode", 'Error: The column "mode" in BatchData does not exist.')


def workspace_with_prepared(make_workspace, sample_prepared) -> Path:
    out, *_ = sample_prepared
    ws = make_workspace({f"data.{k}": v for k, v in SMALL.items()}, pets=SMALL_PETS, pretrain=False)
    shutil.copytree(out, ws / "data" / "prepared")
    return ws


def test_validate_stage_fails_with_a_readable_report(make_workspace, sample_prepared, mlflow_client, capsys):
    ws = workspace_with_prepared(make_workspace, sample_prepared)
    manifest = ws / "data" / "prepared" / "pets" / "pets_manifest.csv"
    pets = pd.read_csv(manifest)
    for breakage in ("same_photo_in_train_and_test", "trimap_value_5", "no_border_in_train"):
        pets = BROKEN[breakage][0](pets)
    pets.to_csv(manifest, index=False)
    code, out, err = run_cli(["validate"], capsys)
    assert code == 1
    assert "unet-ssl validate: error: data validation failed (full report: reports/data_validation.md)" in err
    for breakage in ("same_photo_in_train_and_test", "trimap_value_5", "no_border_in_train"):
        suite, expectation, column = BROKEN[breakage][1]
        assert f"{suite}: {expectation}({column}) failed" in err
    assert "class=border: 0" in err and "1 2 5" in err
    assert "Calculating Metrics" not in out + err  # great-expectations' progress bars are off
    report = (ws / "reports" / "data_validation.md").read_text()
    assert report.count("**FAIL**") == 3
    assert "| pets_manifest | expect_column_values_to_be_between | splits_of_photo | **FAIL** | name=" in report
    experiment = mlflow_client.get_experiment_by_name("unet-ssl").experiment_id
    run = mlflow_client.search_runs([experiment], "tags.stage = 'validate'", order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FAILED" and run.data.metrics["failed_checks"] == 3
    assert [a.path for a in mlflow_client.list_artifacts(run.info.run_id)] == ["data_validation.md"]


def test_validate_stage_passes_on_the_prepared_sample(make_workspace, sample_prepared, mlflow_client, capsys):
    ws = workspace_with_prepared(make_workspace, sample_prepared)
    code, out, err = run_cli(["validate"], capsys)
    assert code == 0 and "great-expectations checks passed" in out
    assert "Calculating Metrics" not in out + err
    first_line = (ws / "reports" / "data_validation.md").read_text().splitlines()[2]
    n = int(first_line.split(" of ")[1].split()[0])
    assert first_line == f"{n} of {n} great-expectations checks passed."
