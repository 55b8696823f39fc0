"""Reading params.yaml, the single source of every setting, and checking it.

`load_params` refuses a params file with an unknown group or key, or a value of the wrong type or outside
its allowed values, with one `ParamsError` naming the key and what it accepts (the CLI prints it as one
`error:` line). The keys and types of `pretrain` and `finetune` come from `PretrainConfig` and
`FinetuneConfig` (their `__post_init__` checks run too); the other groups are described in `GROUPS`."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

CLASS_NAMES = ["pet", "background", "border"]
METHODS = ("simclr", "dense", "mae_patch", "mae_pixel", "mae_none", "none")
FULL_TRAINING_FRACTION = 0.9  # finetune.subset is a fraction of the whole labelled set; 0.9 = all of train


def pretrains_decoder(method: str) -> bool:
    """Masked autoencoders and dense contrastive pretraining train the whole U-Net; SimCLR the encoder alone."""
    return method.startswith("mae_") or method == "dense"


# The settings of the training stages live here, beside their checks, so that reading params.yaml needs no torch.


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simclr"
    epochs: int = 20
    batch_size: int = 384
    lr: float = 1e-3
    temperature: float = 0.2
    image_size: int = 64
    projection: str = "bottleneck"  # or "multi_level"
    mask_patch: int = 20
    mask_ratio: float = 0.75
    masked_only_loss: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"pretrain.method must be one of {METHODS}, got {self.method!r}")
        if self.projection not in ("bottleneck", "multi_level"):
            raise ValueError(f"pretrain.projection must be 'bottleneck' or 'multi_level', got {self.projection!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    subset: float = 0.9
    freeze_encoder: bool = True
    skip_connections: bool = True
    image_size: int = 128
    augment: str = "none"  # "none" (the paper), "flip", or "flip_crop"
    select_best: bool = True  # keep the weights of the epoch with the best validation Jaccard
    lr_schedule: str = "constant"  # "constant" (the paper) or "cosine" (annealed to 0 over the epochs)
    recompute_bn_stats: bool = False  # re-estimate batch-norm statistics on the training photos once, before training
    warmup_epochs: int = 0  # first epochs with the encoder frozen, so the fresh decoder and head do not distort it

    def __post_init__(self):
        if self.warmup_epochs and self.freeze_encoder:
            raise ValueError("finetune.warmup_epochs: a warm-up with the encoder frozen needs an encoder trained "
                             "afterwards, and finetune.freeze_encoder freezes it throughout; set warmup_epochs to 0")
        if not 0 < self.subset <= FULL_TRAINING_FRACTION:
            raise ValueError(f"finetune.subset must be in (0, {FULL_TRAINING_FRACTION}], got {self.subset}")
        if self.augment not in ("none", "flip", "flip_crop"):
            raise ValueError(f"finetune.augment must be 'none', 'flip' or 'flip_crop', got {self.augment!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"finetune.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")




class ParamsError(ValueError):
    """A params file that cannot be used as it is; the message names the file and the key."""


@dataclass(frozen=True)
class Key:
    """What one params.yaml key accepts: a type, and optionally a set of choices or a numeric range."""

    kind: str  # "int", "float", "bool", "str", "list", "dict" (the dataclasses' annotations use the same names)
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # (low, high] instead of [low, high]
    high_open: bool = False
    pattern: str = ""  # a str also accepted when it matches this regular expression
    pattern_help: str = ""
    optional: bool = False  # null allowed

    def describe(self) -> str:
        if self.choices:
            allowed = " | ".join(str(c) for c in self.choices)
            allowed += f" | {self.pattern_help}" if self.pattern_help else ""
            return f"one of {allowed}"
        kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "list": "a list", "dict": "a mapping"}
        text = kinds.get(self.kind, self.kind)
        if self.low is not None and self.high is not None:
            text += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        return text


def _ranged(kind: str, low: float | None = None, high: float | None = None, **kw) -> Key:
    return Key(kind, low=low, high=high, **kw)


POSITIVE_INT, COUNT = _ranged("int", 1), _ranged("int", 0)
POSITIVE = _ranged("float", 0, low_open=True)
FRACTION = _ranged("float", 0, 1, low_open=True, high_open=True)
SUBSET = _ranged("float", 0, FULL_TRAINING_FRACTION, low_open=True)

# Groups without a config dataclass. `seed` is a top-level value, not a group.
GROUPS: dict[str, dict[str, Key]] = {
    "data": {
        "raw_dir": Key("str"), "image_size": POSITIVE_INT, "split": Key("str", ("random", "official")),
        "split_seed": COUNT, "test_fraction": FRACTION, "val_fraction": _ranged("float", 0, 1, high_open=True),
        "exclude": Key("list", optional=True), "on_bad_input": Key("str", ("error", "skip")),
        "pretrain_image_size": POSITIVE_INT, "pretrain_limit": COUNT, "exclude_pets": Key("bool"),
    },
    "evaluate": {"batch_size": POSITIVE_INT, "paper_batch_size": POSITIVE_INT, "examples": COUNT},
    "runtime": {
        "device": Key("str", ("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_help="cuda:N"),
        "precision": Key("str", ("fp32", "bf16")), "channels_last": Key("bool"), "num_threads": COUNT,
    },
    "tune": {
        "study_name": Key("str"), "storage": Key("str"), "n_trials": COUNT, "seed": COUNT,
        "sampler_startup_trials": COUNT, "pruner": Key("str", ("median", "successive_halving", "none")),
        "pruner_startup_trials": COUNT, "pruner_warmup_epochs": COUNT, "pretrain_epochs": COUNT,
        "pretrain_limit": COUNT, "finetune_epochs": POSITIVE_INT, "finetune_subset": SUBSET,
        "enqueue_current": Key("bool"), "space": Key("dict"),
    },
}
# Value checks of the dataclass groups, beyond the type their annotations give.
CHECKS: dict[str, Key] = {
    "pretrain.method": Key("str", METHODS),
    "pretrain.projection": Key("str", ("bottleneck", "multi_level")),
    "pretrain.epochs": COUNT, "pretrain.batch_size": POSITIVE_INT, "pretrain.lr": POSITIVE,
    "pretrain.temperature": POSITIVE, "pretrain.image_size": POSITIVE_INT, "pretrain.mask_patch": POSITIVE_INT,
    "pretrain.mask_ratio": _ranged("float", 0, 1),
    "finetune.epochs": POSITIVE_INT, "finetune.batch_size": POSITIVE_INT, "finetune.lr": POSITIVE,
    "finetune.subset": SUBSET, "finetune.image_size": POSITIVE_INT,
    "finetune.augment": Key("str", ("none", "flip", "flip_crop")),
    "finetune.lr_schedule": Key("str", ("constant", "cosine")), "finetune.warmup_epochs": COUNT,
}
DATACLASS_GROUPS = ("pretrain", "finetune")
# Written by `unet-ssl grid use` into grid/params.json (which always holds `plan`); checked by `unet-ssl grid plan`.
GRID_GROUPS = ("grid", "profile", "plan")
HINTS = {"finetune.subset": f" ({FULL_TRAINING_FRACTION:g} = all of the training split)",
         "tune.finetune_subset": " (as finetune.subset)"}


def _config_classes() -> dict[str, type]:
    return {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def schema() -> dict[str, dict[str, Key]]:
    """Every group and key params.yaml may hold; `pretrain` and `finetune` from their config dataclasses."""
    derived = {group: {f.name: CHECKS.get(f"{group}.{f.name}", Key(str(f.type))) for f in dataclasses.fields(cls)}
               for group, cls in _config_classes().items()}
    return {"data": GROUPS["data"], **derived, **{g: keys for g, keys in GROUPS.items() if g != "data"}}


def _suggest(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {prefix}{close[0]}? " if close else ""


def _check_value(dotted: str, key: Key, value) -> tuple[object, str | None]:
    """(the value, converted where YAML left a number as a string; an error or None)."""
    got = f"got {value!r}"
    if value is None:
        return value, None if key.optional else f"{dotted} must be {key.describe()}, {got}"
    if key.kind == "float" and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (what `dvc exp run -S x=1e-4` writes) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "bool": isinstance(value, bool), "str": isinstance(value, str), "list": isinstance(value, list),
          "dict": isinstance(value, dict)}.get(key.kind, True)  # other annotations: left to the dataclass
    if ok and key.choices:
        ok = value in key.choices or bool(key.pattern and re.fullmatch(key.pattern, value))
    if ok and key.low is not None:
        ok = value > key.low if key.low_open else value >= key.low
    if ok and key.high is not None:
        ok = value < key.high if key.high_open else value <= key.high
    return value, None if ok else f"{dotted} must be {key.describe()}{HINTS.get(dotted, '')}, {got}"


def _check_space(space: dict, known: dict[str, dict[str, Key]]) -> list[str]:
    numeric = [f"{g}.{k}" for g, keys in known.items() for k, spec in keys.items() if spec.kind in ("int", "float")]
    errors = []
    for name, spec in space.items():
        if name not in numeric:
            errors.append(f"tune.space: unknown key {name} ({_suggest(str(name), numeric)}it searches numeric "
                          f"params such as pretrain.temperature, pretrain.lr, finetune.lr)")
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
            errors.append(f"tune.space.{name} must be {{low: ..., high: ..., log: true|false}}, got {spec!r}")
            continue
        try:
            low, high, log = float(spec["low"]), float(spec["high"]), spec.get("log", False)
        except (TypeError, ValueError):
            errors.append(f"tune.space.{name}: low and high must be numbers, got {spec['low']!r}, {spec['high']!r}")
            continue
        if not (low < high and (low > 0 or not log)) or not isinstance(log, bool):
            errors.append(f"tune.space.{name}: need low < high (and low > 0 with log: true), got {spec!r}")
    return errors


def validate_params(params: dict, source: str = "params.yaml", grid: bool | None = None) -> dict:
    """Raises ParamsError listing every unknown group or key and every bad value (one line); converts
    numbers YAML read as strings. Returns `params`. The grid's groups are allowed with `grid`, by
    default when there is a `plan` (grid/params.json)."""
    known = schema()
    groups = ["seed", *known] + (list(GRID_GROUPS) if ("plan" in params if grid is None else grid) else [])
    errors = []
    for group, values in params.items():
        if group not in groups:
            names = ", ".join(f"{group}.{k}" for k in values) if isinstance(values, dict) and values else group
            errors.append(f"unknown key {names} ({_suggest(str(group), groups)}the groups are {', '.join(groups)})")
        elif group == "seed":
            params["seed"], error = _check_value("seed", COUNT, values)
            errors += [error] if error else []
        elif group in known:
            if not isinstance(values, dict):
                errors.append(f"{group} must be a mapping of its keys ({', '.join(known[group])}), got {values!r}")
                continue
            for name, value in values.items():
                dotted = f"{group}.{name}"
                if name not in known[group]:
                    errors.append(f"unknown key {dotted} ({_suggest(str(name), list(known[group]), group + '.')}"
                                  f"{group} takes {', '.join(known[group])})")
                    continue
                values[name], error = _check_value(dotted, known[group][name], value)
                errors += [error] if error else []
            if group == "tune" and isinstance(values.get("space"), dict):
                errors += _check_space(values["space"], known)
    if not errors:  # the dataclasses' own checks, for anything they test that the schema does not
        for group, cls in _config_classes().items():
            if isinstance(params.get(group), dict):
                try:
                    cls(**params[group])
                except (TypeError, ValueError) as e:
                    errors.append(str(e))
    if errors:
        raise ParamsError(f"{source}: {'; '.join(errors)}")
    return params


def load_params(path: Path | str = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run from the repository root or pass --params")
    try:
        if path.suffix == ".json":  # the grid's generated params (paths.GRID_PARAMS)
            params = json.loads(path.read_text())
        else:
            params = yaml.safe_load(path.read_text())
    except json.JSONDecodeError as e:
        raise ParamsError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of stage groups")
    return validate_params(params, str(path))
