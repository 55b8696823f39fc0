"""Stage `validate`: runs the great-expectations suites; writes a readable report and fails the
pipeline when any expectation fails."""
from __future__ import annotations

import pandas as pd

from unet_ssl.stages.common import PETS, PRETRAIN_IMAGES, REPORTS
from unet_ssl.tracking import stage_run
from unet_ssl.validate import pets_suites, pretrain_suites, run_suite

REPORT = REPORTS / "data_validation.md"


class DataValidationError(RuntimeError):
    pass


def write_report(rows: list[dict], inputs: pd.DataFrame) -> str:
    failed = [r for r in rows if not r["success"]]
    lines = ["# Data validation", "",
             f"{len(rows) - len(failed)} of {len(rows)} great-expectations checks passed.", "",
             "| suite | expectation | column | result | details |", "|---|---|---|---|---|"]
    lines += [f"| {r['suite']} | {r['expectation']} | {r['column']} | {'pass' if r['success'] else '**FAIL**'} | {r['details'][:120]} |" for r in rows]
    lines += ["", "## Inputs converted, ignored, excluded or skipped at prepare time", ""]
    if inputs.empty:
        lines.append("None.")
    else:
        lines += ["| file | action | problem |", "|---|---|---|"]
        lines += [f"| {r.file} | {r.action} | {r.problem} |" for r in inputs.itertuples()]
    REPORTS.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    return "\n".join(f"  {r['suite']}: {r['expectation']}({r['column']}) failed: {r['details'][:200]}" for r in failed)


def run(params: dict) -> None:
    pets = pd.read_csv(PETS.parent / "pets_manifest.csv")
    pretrain = pd.read_csv(PRETRAIN_IMAGES.parent / "pretrain_manifest.csv")
    inputs = pd.concat([pd.read_csv(PETS.parent / "input_report.csv"),
                        pd.read_csv(PRETRAIN_IMAGES.parent / "pretrain_input_report.csv")])
    with stage_run("validate", params) as run:
        rows = [row for suite in pets_suites(pets, params["data"]) + pretrain_suites(pretrain) for row in run_suite(suite)]
        failures = write_report(rows, inputs)
        run.log_metrics({"checks": len(rows), "failed_checks": sum(not r["success"] for r in rows)})
        run.log_artifact(REPORT)
        if failures:
            raise DataValidationError(f"data validation failed (full report: {REPORT}):\n{failures}")
    print(f"validate: {len(rows)} great-expectations checks passed on {len(pets)} pets and {len(pretrain)} pretraining images; "
          f"{len(inputs)} inputs converted/ignored/excluded (see {REPORT})")
