"""great-expectations suites over the prepared manifests: what must hold before any training.

Each suite runs on a pandas frame: the manifest itself, or a small summary of it (split sizes,
class presence) where the check is about the table as a whole."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd

SPLITS = ("train", "val", "test")
CLASS_COLUMNS = {"pet": "pet_fraction", "background": "background_fraction", "border": "border_fraction"}


@dataclass
class Suite:
    name: str
    frame: pd.DataFrame
    expectations: list
    id_column: str | None = None  # named next to every failing value, so a report says which file failed


def split_share_bounds(n: int, fraction: float, sigmas: float = 4.0) -> tuple[int, int]:
    """Counts a split of `n` photos may have when each photo lands in it with probability `fraction`
    (a hashed split): the binomial mean +- `sigmas` standard deviations. Checked on the counts alone,
    so this does not re-derive the split rule it checks."""
    mean, sd = n * fraction, (n * fraction * (1 - fraction)) ** 0.5
    return max(int(fraction > 0), math.floor(mean - sigmas * sd - 1)), math.ceil(mean + sigmas * sd + 1)


def pets_suites(manifest: pd.DataFrame, data_params: dict) -> list[Suite]:
    import great_expectations as gx

    E = gx.expectations
    # byte-identical photos under other names (the official set has some) must share one split
    manifest = manifest.assign(splits_of_photo=manifest.groupby("sha256")["split"].transform("nunique"))
    per_image = Suite("pets_manifest", manifest, [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in ("name", "image_file", "mask_file", "split", "sha256")],
        E.ExpectColumnValuesToBeUnique(column="name"),
        E.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="mask_width"),
        E.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="mask_height"),
        E.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"]),
        E.ExpectColumnValuesToMatchRegex(column="trimap_values", regex=r"^[123](?: [123])*$"),
        E.ExpectColumnValuesToMatchRegex(column="class_values", regex=r"^[012](?: [012])*$"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeBetween(column="splits_of_photo", min_value=1, max_value=1,
                                        meta={"why": "the same photo must not sit in two splits"}),
        *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in CLASS_COLUMNS.values()],
    ], id_column="name")
    counts = manifest["split"].value_counts()
    sizes = pd.DataFrame({"split": list(SPLITS), "count": [int(counts.get(s, 0)) for s in SPLITS]})
    size_expectations = [E.ExpectColumnValuesToBeBetween(column="count", min_value=1, condition_parser="pandas",
                                                         row_condition='split=="train"')]
    if data_params["split"] == "random":
        n, n_test = len(manifest), int(counts.get("test", 0))
        bounds = {"test": split_share_bounds(n, data_params["test_fraction"]),
                  "val": split_share_bounds(n - n_test, data_params["val_fraction"])}
        for split, (low, high) in bounds.items():
            size_expectations.append(E.ExpectColumnValuesToBeBetween(
                column="count", min_value=low, max_value=high, condition_parser="pandas",
                row_condition=f'split=="{split}"', meta={"why": "hashed split share within 4 binomial sd"}))
    train = manifest[manifest["split"] == "train"]
    presence = pd.DataFrame({"class": list(CLASS_COLUMNS),
                             "train_images_with_class": [int((train[c] > 0).sum()) for c in CLASS_COLUMNS.values()]})
    return [
        per_image,
        Suite("pets_split_sizes", sizes, size_expectations, id_column="split"),
        Suite("pets_class_presence", presence,
              [E.ExpectColumnValuesToBeBetween(column="train_images_with_class", min_value=1)], id_column="class"),
    ]


def pretrain_suites(manifest: pd.DataFrame) -> list[Suite]:
    import great_expectations as gx

    E = gx.expectations
    return [Suite("pretrain_manifest", manifest, [
        E.ExpectTableRowCountToBeBetween(min_value=2),
        E.ExpectColumnValuesToNotBeNull(column="member"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["shard", "member"]),
        E.ExpectColumnValuesToMatchRegex(column="wnid", regex=r"^n\d{8}$"),
    ], id_column="member")]


def _context():
    """An ephemeral GX context with its progress bars off (they would fill the stage's log)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX sets this module's logger to INFO on import; it announces a temporary docs folder per context
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _details(result: dict, exception_message: str | None, id_column: str | None, limit: int = 10) -> str:
    """The failing values, each with the row's id column (e.g. `name=Abyssinian_11: 1 2 5`)."""
    rows = result.get("unexpected_index_list")
    if rows and isinstance(rows[0], dict):
        shown = []
        for row in rows[:limit]:
            ident = row.get(id_column) if id_column else None
            values = ", ".join(str(v.item() if hasattr(v, "item") else v) for k, v in row.items() if k != id_column)
            shown.append(f"{id_column}={ident}: {values}" if ident is not None else values)
        more = f" ... ({len(rows)} in all)" if len(rows) > limit else ""
        return "; ".join(shown) + more
    if "observed_value" in result:
        return f"observed {result['observed_value']}"
    return exception_message or ""


def _exception_message(info: dict | None) -> str | None:
    """GX reports an expectation that could not run (e.g. a missing column) either flat or keyed by metric."""
    info = info or {}
    if "exception_message" in info:
        return info["exception_message"]
    return next((v["exception_message"] for v in info.values()
                 if isinstance(v, dict) and v.get("exception_message")), None)


def run_suite(suite: Suite) -> list[dict]:
    """Runs one suite with an ephemeral GX context; returns one row per expectation."""
    import great_expectations as gx

    context = _context()
    batch = (context.data_sources.add_pandas(suite.name).add_dataframe_asset("frame")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": suite.frame}))
    gx_suite = context.suites.add(gx.ExpectationSuite(name=suite.name))
    for e in suite.expectations:
        gx_suite.add_expectation(e)
    result_format = ({"result_format": "COMPLETE", "unexpected_index_column_names": [suite.id_column]}
                     if suite.id_column else "SUMMARY")
    rows = []
    for r in batch.validate(gx_suite, result_format=result_format).results:
        kwargs = r.expectation_config.kwargs
        rows.append({
            "suite": suite.name,
            "expectation": r.expectation_config.type,
            "column": kwargs.get("column")
            or ",".join(str(kwargs[k]) for k in ("column_A", "column_B", "column_list") if k in kwargs),
            "success": bool(r.success),
            "details": _details(r.result or {}, _exception_message(r.exception_info), suite.id_column),
        })
    return rows
