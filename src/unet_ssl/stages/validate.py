"""Stage `validate`: runs the great-expectations suites; writes a readable report and fails the
pipeline when any expectation fails."""
from __future__ import annotations

import pandas as pd

from unet_ssl.data.expectations import pets_suites, pretrain_suites, run_suite
from unet_ssl.paths import (
    PETS,
    PETS_INPUT_REPORT,
    PETS_MANIFEST,
    PRETRAIN_IMAGES,
    PRETRAIN_INPUT_REPORT,
    PRETRAIN_MANIFEST,
    REPORTS,
    VALIDATION_REPORT,
)
from unet_ssl.render import table
from unet_ssl.tracking.mlflow_runs import stage_run

MAX_INPUT_ROWS = 100  # input-report rows shown in the markdown report (the CSVs hold every one)


class DataValidationError(RuntimeError):
    """One or more great-expectations checks failed; the message names each failed expectation."""


def _cell(text: object, limit: int = 300) -> str:
    """Markdown-table-safe text."""
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


def write_report(rows: list[dict], inputs: pd.DataFrame) -> str:
    failed = [r for r in rows if not r["success"]]
    checks = [[r["suite"], r["expectation"], _cell(r["column"]), "pass" if r["success"] else "**FAIL**",
               _cell(r["details"])] for r in rows]
    lines = ["# Data validation", "",
             f"{len(rows) - len(failed)} of {len(rows)} great-expectations checks passed.", "",
             *table(["suite", "expectation", "column", "result", "details"], checks)]
    lines += ["", "## Inputs converted, ignored, excluded or skipped at prepare time", ""]
    if inputs.empty:
        lines.append("None.")
    else:
        lines += table(["file", "action", "problem"], [[_cell(r.file), r.action, _cell(r.problem)]
                                                        for r in inputs.head(MAX_INPUT_ROWS).itertuples()])
        if len(inputs) > MAX_INPUT_ROWS:
            lines += ["", f"... and {len(inputs) - MAX_INPUT_ROWS} more; all are in the prepared folders' input "
                          "reports: " + ", ".join(f"{n} {a}" for a, n in inputs["action"].value_counts().items())
                          + " in all."]
    REPORTS.mkdir(exist_ok=True)
    VALIDATION_REPORT.write_text("\n".join(lines) + "\n")
    return "\n".join(f"  {r['suite']}: {r['expectation']}({r['column']}) failed: {r['details'][:200]}"
                     for r in failed)


def run(params: dict) -> None:
    pets_files = [PETS.parent / PETS_MANIFEST, PETS.parent / PETS_INPUT_REPORT]
    pretrain_files = [PRETRAIN_IMAGES.parent / PRETRAIN_MANIFEST, PRETRAIN_IMAGES.parent / PRETRAIN_INPUT_REPORT]
    pets, pets_inputs = map(pd.read_csv, pets_files)
    pretrain, pretrain_inputs = map(pd.read_csv, pretrain_files)
    inputs = pd.concat([pets_inputs, pretrain_inputs])
    with stage_run("validate", params) as run:
        run.log_data("pets-manifest", pets_files, "validation")
        run.log_data("pretrain-manifest", pretrain_files, "validation")
        rows = [row for suite in pets_suites(pets, params["data"]) + pretrain_suites(pretrain)
                for row in run_suite(suite)]
        failures = write_report(rows, inputs)
        run.log_metrics({"checks": len(rows), "failed_checks": sum(not r["success"] for r in rows)})
        run.log_artifact(VALIDATION_REPORT)
        if failures:
            raise DataValidationError(f"data validation failed (full report: {VALIDATION_REPORT}):\n{failures}")
    print(f"validate: {len(rows)} great-expectations checks passed on {len(pets)} pets and {len(pretrain)} pretraining "
          f"images; {len(inputs)} inputs converted/ignored/excluded/skipped (see {VALIDATION_REPORT})")
