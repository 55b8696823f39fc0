"""Stages `table1`, `table2` and `resolution` of grid/dvc.yaml: reports in reports/ generated from the
grid's run records, checkpoints and data (`unet_ssl.experiments.paper_tables` and `.resolution`)."""
from __future__ import annotations

from unet_ssl.config import load_params
from unet_ssl.experiments import grid_plan, grid_runs, paper_tables, resolution
from unet_ssl.paths import GRID_PARAMS
from unet_ssl.tracking.mlflow_runs import stage_run


def table(name: str) -> None:
    params = load_params(GRID_PARAMS)
    paper = grid_plan.TABLES[name]
    frame = paper_tables.metric_frame(grid_runs.results(params, paper.cells), paper_tables.pet_names())
    with stage_run(f"grid_{name}", {k: params[k] for k in ("profile", "grid", "data", "pretrain", "finetune")}) as run:
        report = paper_tables.write_report(params, paper, frame)
        run.log_artifact(report, "report")
        run.log_metrics({"runs": len(frame)})
    print(f"grid table {name}: {len(frame)} runs of {len(paper.cells)} cells -> {report}")


def resolution_study() -> None:
    params = load_params(GRID_PARAMS)
    models = resolution.models(params)
    with stage_run("grid_resolution", {k: params[k] for k in ("profile", "grid", "data", "finetune")}) as run:
        report = resolution.write_report(params, resolution.evaluate(params, models))
        run.log_artifact(report, "report")
    print(f"grid resolution: {len(models)} models x {len(params['grid']['resolutions'])} sizes -> {report}")
