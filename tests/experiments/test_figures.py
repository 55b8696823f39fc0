"""The grid's figures, drawn from the run records committed in grid/ (the levers table's runs)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from unet_ssl.config import load_params
from unet_ssl.experiments import figures, grid_plan, grid_runs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def drawn(monkeypatch):
    """The levers runs' frame, and the figures the functions would save (kept open to inspect)."""
    monkeypatch.chdir(REPO)
    frame = grid_runs.results(load_params(REPO / "grid" / "params.json"), grid_plan.LEVERS.cells)
    saved: list[plt.Figure] = []
    monkeypatch.setattr(figures, "save", lambda fig, path: saved.append(fig))
    yield frame, saved
    plt.close("all")


def test_pretraining_loss_has_one_colour_and_legend_entry_per_pretraining(drawn, tmp_path):
    frame, saved = drawn
    figures.pretraining_curves(frame, tmp_path / "loss.png")
    (ax,) = saved[0].axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    expected = {grid_plan.cell_by_name(cell).pretrained_by for cell in set(frame["cell"])} - {"none"}
    assert {"simclr", "simclr-all_photos", "mae_patch-with_pets", "dense"} <= expected  # the records are there
    assert sorted(labels) == sorted(expected)  # seeds are not legend entries; scratch pretrains nothing
    assert len(ax.lines) == len({r for r in frame["pretrain_run"] if not r.startswith("none-")})  # a line per run
    assert len({line.get_color() for line in ax.lines}) == len(expected)  # the seeds of a pretraining alike


def test_learning_curves_legend_sits_below_the_panel_within_the_figures_width(drawn, tmp_path):
    frame, saved = drawn
    figures.learning_curves(frame, grid_plan.LEVERS, tmp_path / "curves.png")
    fig = saved[0]
    (legend,) = fig.legends
    assert len(legend.get_texts()) == frame["cell"].nunique() >= 8  # a legend entry per row with runs
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert box.y1 <= fig.axes[0].get_tightbbox(renderer).y0  # below the panel, not over the curves
    assert box.width <= fig.bbox.width  # one column per panel: as wide as the figure at most, not cut off
    styles = [(line.get_color(), line.get_linestyle()) for line in legend.get_lines()]
    assert len(styles) > 10 and len(set(styles)) == len(styles)  # more rows than colours, and still no two alike
