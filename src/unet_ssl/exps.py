"""`make exps` (`python -m unet_ssl.exps`): `dvc exp show` for a terminal.

`dvc exp show` lists every param, dependency and metric of both pipelines (the root one and the grid's,
thousands of columns) and collapses them to `…` at 120 columns. This asks DVC for the params of
params.yaml that differ between the experiments (`--only-changed`) and the two main test scores
(dataset-level Jaccard and F1, metrics/evaluate.json), cuts the file prefixes DVC adds to tell
params.yaml from grid/params.json, and prints one line per experiment under its baseline commit. Params
that do not fit the terminal width are named below the table. Extra arguments go to `dvc exp show`
(e.g. `-A` for the experiments of every commit)."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import textwrap

from unet_ssl.render import compact

SCORES = {"metrics/evaluate.json:test.jaccard": "test jaccard", "metrics/evaluate.json:test.f1": "test f1"}
INFO = ("Experiment", "rev", "typ", "Created", "parent", "State")
GROUPS = ("seed", "data", "pretrain", "finetune", "evaluate", "runtime", "tune")
DROP = r"^(?!(params\.yaml:)?(seed$|" + "|".join(rf"{g}\." for g in GROUPS[1:]) + "))"
KEEP = "^(" + "|".join(INFO) + ")$|^(" + "|".join(k.replace(".", r"\.") for k in SCORES) + ")$"


def dvc_exp_show(extra: list[str]) -> str:
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--csv", "--only-changed", "--drop", DROP, "--keep", KEEP,
           *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)
    return done.stdout


def cell(text: str) -> str:
    """Scores and float params in render.compact; integers and other text as DVC wrote them."""
    try:
        value = float(text)
    except ValueError:
        return text
    return compact(value) if "." in text or "e" in text.lower() else text


def table(csv_text: str, width: int) -> str:
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    if not rows:
        return "no experiments"
    params = [c for c in rows[0] if c not in INFO and c not in SCORES]
    state = any(r.get("State") for r in rows)
    head = ["experiment", "created", *SCORES.values(), *(["state"] if state else [])]
    lines = []
    for r in rows:
        name = r["rev"] if r["typ"] == "baseline" else f"  {r['Experiment'] or r['rev']}"
        created = (r["Created"] or "-").replace("T", " ")[:16]
        lines.append([name, created, *(cell(r.get(k) or "-") for k in SCORES),
                      *([r.get("State") or ""] if state else [])])
    columns = [head, *lines]
    hidden = []
    for p in params:
        label = p.split(":", 1)[-1]
        col_width = max(len(label), *(len(cell(r[p] or "-")) for r in rows))
        used = sum(max(len(c[i]) for c in columns) + 2 for i in range(len(head)))
        if not hidden and used + col_width <= width:
            head.append(label)
            for line, r in zip(lines, rows):
                line.append(cell(r[p] or "-"))
        else:
            hidden.append(label)
    widths = [max(len(c[i]) for c in columns) for i in range(len(head))]
    out = []
    for i, cells in enumerate(columns):
        out.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) if j < 2 + len(SCORES) else c.ljust(w)
                             for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if i == 0:
            out.append("-" * min(width, len(out[0])))
    if hidden:
        out += textwrap.wrap(f"also differ (not shown at {width} columns): {', '.join(hidden)}", width)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    width = shutil.get_terminal_size((120, 24)).columns
    print(table(dvc_exp_show(sys.argv[1:] if argv is None else argv), width))


if __name__ == "__main__":
    main()
