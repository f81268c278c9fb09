"""Helpers shared by the commands: devices, progress bars, reading and writing results."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> "torch.device":
    import torch  # here, so that commands answer --help without loading torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise PipelineError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {name} was asked for but this machine has no usable CUDA GPU; use --device cpu.")
    return device


def progress(**kwargs: Any) -> tqdm:
    """A progress bar on stderr, silent when stderr is not a terminal unless asked for."""
    disable = None if os.environ.get("PIPELINE_PROGRESS", "auto") == "auto" else os.environ["PIPELINE_PROGRESS"] == "0"
    return tqdm(file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically, so an interrupted run never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def parse_expectations(items: tuple[str, ...] | list[str]) -> dict:
    """``("backbone.name=resnet50", "preprocessing.image_size=224")`` -> nested dict.

    Values are read as YAML scalars, so numbers compare as numbers.
    """
    import yaml

    expected: dict = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"--expect takes KEY=VALUE with a dotted key such as backbone.name=resnet50, got {item!r}.")
        key, value = item.split("=", 1)
        node = expected
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return expected


def cache_label(metadata: dict) -> dict:
    """The labels every reported figure carries: dataset, backbone, image size, preprocessing."""
    prep = metadata.get("preprocessing", {})
    dataset = metadata.get("dataset", {})
    name = dataset.get("name")
    if name == "imagefolder" and dataset.get("folder"):
        name = f"imagefolder:{dataset['folder']}"
    return {
        "dataset": name,
        "backbone": metadata.get("backbone", {}).get("name"),
        "image_size": prep.get("image_size"),
        "preprocessing": f"{prep.get('resize')}/{prep.get('interpolation')}/{prep.get('normalisation')}",
    }


def safe_filename(name: str, suffix: str = "") -> str:
    """A file name made from data (a class name from a folder or an HDF5 file): letters,
    digits, '.', '_' and '-' only, so it cannot leave its folder. Where anything had to change,
    a short hash of the original name follows, so two names never share a file (``good part``
    and ``good_part``)."""
    name = str(name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".")[:100] or "_"
    if cleaned != name:
        cleaned += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return cleaned + suffix
