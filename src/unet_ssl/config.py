"""Reading params.yaml, the single source of every setting."""
from __future__ import annotations

from pathlib import Path

import yaml

CLASS_NAMES = ["pet", "background", "border"]


def load_params(path: Path | str = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run from the repository root or pass --params")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of stage groups")
    return params
