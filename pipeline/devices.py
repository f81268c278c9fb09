"""Devices by name: auto (a GPU if there is one), cpu, cuda, cuda:<i>. Below the heads and the
commands alike, so that a head built with ``device="auto"`` resolves it itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
