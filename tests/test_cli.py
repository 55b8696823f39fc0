"""CLI papercuts: a bad params.yaml stops with one `error:` line naming the key and what it accepts
(no traceback), `--params` after the subcommand, and bench's enumerated comma lists."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, set_dotted

from unet_ssl import config
from unet_ssl.cli import BENCH_PRECISIONS, BENCH_WORKLOADS, build_parser, main


def write_params(folder: Path, overrides: dict, name: str = "params.yaml") -> Path:
    params = set_dotted(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    path = folder / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def error_of(argv: list[str], capsys) -> str:
    """Runs the CLI in-process; returns its one stderr line (and checks it is the only one)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("overrides, wanted", [
    ({"finetune.subset": 1.0}, ["finetune.subset must be a number in (0, 0.9]", "got 1.0"]),
    ({"finetune.subset": 0}, ["finetune.subset must be", "got 0"]),
    ({"unknown.key": 1}, ["unknown key unknown.key", "the groups are seed, data, pretrain, finetune"]),
    ({"pretrain.method": "foo"}, ["pretrain.method must be one of simclr | dense | mae_patch | mae_pixel | mae_none",
                                  "| none", "got 'foo'"]),
    ({"finetune.subsett": 0.1}, ["unknown key finetune.subsett", "did you mean finetune.subset?"]),
    ({"runtime.precision": "fp16"}, ["runtime.precision must be one of fp32 | bf16"]),
    ({"finetune.epochs": "ten"}, ["finetune.epochs must be an integer >= 1", "got 'ten'"]),
    ({"data.split": "officail"}, ["data.split must be one of random | official"]),
    ({"tune.space": {"pretrain.temprature": {"low": 0.1, "high": 1}}}, ["tune.space: unknown key pretrain.temprature"]),
])
def test_a_bad_params_file_is_one_error_line_naming_the_key(tmp_path, monkeypatch, capsys, overrides, wanted):
    write_params(tmp_path, overrides)
    monkeypatch.chdir(tmp_path)
    line = error_of(["finetune"], capsys)
    assert line.startswith("unet-ssl finetune: error: params.yaml: ")
    for text in wanted:
        assert text in line


def test_every_problem_is_named_in_the_one_line(tmp_path, monkeypatch, capsys):
    write_params(tmp_path, {"finetune.subset": 1.0, "pretrain.method": "foo", "unknown.key": 1})
    monkeypatch.chdir(tmp_path)
    line = error_of(["pretrain"], capsys)
    assert "finetune.subset" in line and "pretrain.method" in line and "unknown.key" in line


def test_invalid_yaml_is_one_error_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("finetune:\n  subset: [0.9\n")
    monkeypatch.chdir(tmp_path)
    assert "params.yaml is not valid YAML (line" in error_of(["evaluate"], capsys)


def test_a_broken_grid_params_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    """grid/params.json is generated, but a hand edit can break it: the grid's commands name the spot."""
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "params.json").write_text('{\n  "grid": {"seeds": [0, 1,]}\n}\n')
    monkeypatch.chdir(tmp_path)
    line = error_of(["grid", "plan"], capsys)
    assert line.startswith("unet-ssl grid: error: grid/params.json is not valid JSON (line 2, column"), line


def test_the_error_reaches_the_shell_without_traceback(tmp_path):
    write_params(tmp_path, {"finetune.subset": 1.0})
    done = subprocess.run([sys.executable, "-m", "unet_ssl", "finetune"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "unet-ssl finetune: error: params.yaml: finetune.subset must be a number in (0, 0.9] "
        "(0.9 = all of the training split), got 1.0"]


def test_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    """`dvc exp run -S pretrain.lr=1e-4` writes 1e-4, which PyYAML reads as a string."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-4", 1))
    params = config.load_params(path)
    assert params["pretrain"]["lr"] == pytest.approx(1e-4) and isinstance(params["pretrain"]["lr"], float)


def test_the_repository_params_and_profiles_are_valid():
    config.load_params(REPO / "params.yaml")
    config.load_params(REPO / "grid" / "params.json")  # holds `plan`: the grid's groups are allowed
    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        config.validate_params(yaml.safe_load(profile.read_text()), str(profile), grid=profile.name.startswith("grid-"))
    with pytest.raises(config.ParamsError, match="unknown key grid.tables"):
        config.validate_params({"grid": {"tables": []}})  # not in params.yaml


def test_allowed_keys_come_from_the_config_dataclasses():
    from unet_ssl.core import finetuning, pretraining
    from unet_ssl.data import splits
    from unet_ssl.experiments.bench.workloads import WORKLOADS, BenchConfig

    schema = config.schema()
    assert list(schema["pretrain"]) == [f.name for f in dataclasses.fields(pretraining.PretrainConfig)]
    assert list(schema["finetune"]) == [f.name for f in dataclasses.fields(finetuning.FinetuneConfig)]
    assert schema["pretrain"]["method"].choices == config.METHODS
    assert splits.FULL_TRAINING_FRACTION is config.FULL_TRAINING_FRACTION  # subsets are fractions of the same whole
    assert BENCH_WORKLOADS == WORKLOADS and set(BENCH_PRECISIONS) == set(BenchConfig().precisions)


def test_params_after_the_subcommand(tmp_path, monkeypatch, capsys):
    parser = build_parser()
    assert parser.parse_args(["finetune"]).params == "params.yaml"
    assert parser.parse_args(["--params", "a.yaml", "finetune"]).params == "a.yaml"
    assert parser.parse_args(["finetune", "--params", "b.yaml"]).params == "b.yaml"
    assert parser.parse_args(["bench", "--params", "c.yaml"]).params == "c.yaml"
    assert parser.parse_args(["tune", "--params", "d.yaml", "--n-trials", "0"]).params == "d.yaml"
    bad = write_params(tmp_path, {"finetune.subset": 2}, name="other.yaml")
    monkeypatch.chdir(tmp_path)
    error = error_of(["finetune", "--params", str(bad)], capsys)
    assert error.startswith(f"unet-ssl finetune: error: {bad}: finetune.subset")


@pytest.mark.parametrize("given, meant", [("both", ("off", "on")), ("on", ("on",)), ("off", ("off",)),
                                          ("off,on", ("off", "on")), ("on,both", ("on", "off"))])
def test_bench_channels_last_both_means_off_and_on(given, meant):
    assert build_parser().parse_args(["bench", "--channels-last", given]).channels_last == meant


@pytest.mark.parametrize("option, value, named", [
    ("--channels-last", "maybe", "'maybe'"), ("--channels-last", "true", "'true'"),
    ("--precisions", "fp32,fp16", "'fp16'"), ("--workloads", "simclr,segment", "'segment'"),
    ("--workloads", ",", "empty list"), ("--stages", "pretrain,train", "'train'"),
    ("--numerics-seeds", "0,a", "integers"), ("--batch", "0", "at least 1"),
])
def test_bench_rejects_unknown_values(capsys, option, value, named):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", option, value])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"unet-ssl bench: error: argument {option}: ")
    assert named in errors[0]


def test_bench_lists_reach_the_config():
    args = build_parser().parse_args(["bench", "--workloads", "mae,evaluate", "--precisions", "bf16",
                                      "--stages", "prepare-pets,finetune", "--numerics-seeds", "3,4"])
    assert args.workloads == ("mae", "evaluate") and args.precisions == ("bf16",)
    assert args.stages == ("prepare-pets", "finetune") and args.numerics_seeds == (3, 4)
    defaults = build_parser().parse_args(["bench"])
    assert defaults.workloads == BENCH_WORKLOADS and defaults.channels_last == ("off", "on") and defaults.stages == ()


def test_exps_table_fits_the_width():
    from unet_ssl.exps import table

    header = ("Experiment,rev,typ,Created,parent,metrics/evaluate.json:test.f1,metrics/evaluate.json:test.jaccard,"
              + ",".join(f"params.yaml:finetune.long_param_name_{i}" for i in range(6)))
    rows = [",workspace,baseline,,," + "0.70639,0.56817," + ",".join(["0.01"] * 6),
            ",main,baseline,2026-11-30T06:01:25,,0.70639,0.56817," + ",".join(["0.9"] * 6),
            "campy-grig,cd15815,branch_base,2026-11-30T06:03:44,,0.61,0.5," + ",".join(["0.01"] * 6)]
    out = table("\n".join([header, *rows]) + "\n", 120)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0].startswith("experiment    created           test jaccard  test f1  finetune.long_param_name_0")
    assert lines[2].split() == ["workspace", "-", "0.5682", "0.7064", "0.01", "0.01"]  # two 26-char params fit
    assert lines[4].split()[:4] == ["campy-grig", "2026-11-30", "06:03", "0.5"]
    hidden = "also differ (not shown at 120 columns): finetune.long_param_name_2, finetune.long_param_name_3"
    assert hidden in " ".join(lines[5:])
