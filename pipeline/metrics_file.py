"""Metrics files: numbers only, for ``dvc metrics show`` / ``diff``; what describes them beside.

A head stage's results are written as two files::

    metrics/knn_efficientnet_lite0.json        mean and per-class AUROC, AUPR, FPR@95%TPR, ...
    metrics/knn_efficientnet_lite0.about.json  dataset, backbone, preprocessing, the head's settings,
                                               and any other text (the "about" sidecar)

``write`` splits one payload into the two (the ``about`` section and every leaf that is not a
number go to the sidecar, in the same nesting); ``read`` puts them back together, and also
reads a single file that holds both (as earlier versions wrote, and as results/ keeps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.files import write_json

SIDECAR = ".about.json"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".json") + SIDECAR)


def is_sidecar(path: str | Path) -> bool:
    return Path(path).name.endswith(SIDECAR)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split(payload: dict) -> tuple[dict, dict]:
    """(numbers, description): the ``about`` section and non-numeric leaves go to the second."""
    def walk(node: dict) -> tuple[dict, dict]:
        numbers, text = {}, {}
        for key, value in node.items():
            if isinstance(value, dict):
                n, t = walk(value)
                if n:
                    numbers[key] = n
                if t:
                    text[key] = t
            elif _is_number(value):
                numbers[key] = value
            else:
                text[key] = value
        return numbers, text

    numbers, text = walk({k: v for k, v in payload.items() if k != "about"})
    if "about" in payload:
        text = {"about": payload["about"], **text}
    return numbers, text


def merge(numbers: dict, text: dict) -> dict:
    """The payload ``split`` came from (keys in the numbers' order, then the description's)."""
    merged = dict(numbers)
    for key, value in text.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write(path: str | Path, payload: dict) -> None:
    numbers, text = split(payload)
    write_json(path, numbers)
    write_json(sidecar_path(path), text)


def read(path: str | Path) -> dict:
    """A metrics file with its sidecar merged in (if there is one). Raises OSError and
    ValueError (json) as open and json.loads do."""
    data = json.loads(Path(path).read_text())
    about = sidecar_path(path)
    if isinstance(data, dict) and about.is_file():
        data = merge(data, json.loads(about.read_text()))
    return data
