"""How reports and records write results: number formats, markdown tables, image links, section
replacement, and scores as JSON.

One place for how a report writes a number, so every report reads the same; torch-free, so every layer
can import it."""
from __future__ import annotations

import math
import re
from pathlib import Path

from unet_ssl.config import CLASS_NAMES


def missing(value) -> bool:
    """None or NaN: a score that does not exist (a class absent from every image, a cell not run)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def score_record(scores: dict) -> dict:
    """Scores as valid, readable JSON: per-class lists -> {class name: value}; NaN (class absent) -> None."""
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    out = {k: clean(v) for k, v in scores.items() if k != "per_class"}
    if "per_class" in scores:
        out["per_class"] = {m: dict(zip(CLASS_NAMES, map(clean, vals))) for m, vals in scores["per_class"].items()}
    return out


def number(value: float | None, digits: int = 3, absent: str = "n/a") -> str:
    """A score with `digits` decimals; `absent` for None or NaN."""
    return absent if missing(value) else f"{value:.{digits}f}"


def significant(value, digits: int = 4, absent: str = "") -> str:
    """A float with `digits` significant digits, for values whose scale varies (learning rates,
    temperatures); other values as text; `absent` for None."""
    return absent if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def compact(value: float) -> str:
    """At most 4 decimals without trailing zeros; 3 significant digits below 0.001, where decimals say nothing."""
    return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")


def mean_sd(mean: float, sd: float, n: int, digits: int = 3) -> str:
    """'mean ± sample standard deviation' over n runs; the mean alone for one run, 'not run' for none."""
    if n == 0:
        return "not run"
    return number(mean, digits) if n == 1 or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def percent(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}%}"


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines: header, separator, one line per row (cells as text)."""
    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]


def image(alt: str, path: Path, report: Path) -> str:
    """A markdown image of `path` linked relative to the report that shows it, so the report renders
    wherever the folder is."""
    return f"![{alt}]({Path(path).relative_to(Path(report).parent).as_posix()})"


def write_section(path: Path, key: str, markdown: str, order: tuple[str, ...], head: str = "",
                  marker: str = "section") -> None:
    """Replaces the section `key` of the markdown file at `path` (or adds it), keeping the others, so
    several commands can each own a part of one report. A section sits between `<!-- {marker}:{key} -->`
    and `<!-- /{marker}:{key} -->`; sections are ordered by the first prefix of `order` their key starts
    with (unknown keys last), then as first written. A new file starts with `head`."""
    text = path.read_text() if path.is_file() else head
    pattern = re.compile(rf"<!-- {re.escape(marker)}:(?P<key>[\w-]+) -->\n.*?<!-- /{re.escape(marker)}:(?P=key) -->\n?",
                         re.S)
    sections = {m["key"]: m[0].rstrip("\n") for m in pattern.finditer(text)}
    top = pattern.sub("", text).rstrip("\n")
    sections[key] = f"<!-- {marker}:{key} -->\n{markdown.rstrip(chr(10))}\n<!-- /{marker}:{key} -->"
    first = list(sections)

    def rank(k: str) -> tuple[int, int]:
        return next((i for i, kind in enumerate(order) if k.startswith(kind)), len(order)), first.index(k)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(top + "\n\n" + "\n\n".join(sections[k] for k in sorted(sections, key=rank)) + "\n")
