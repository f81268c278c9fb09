"""Anomaly maps drawn over the images they are of (numpy and PIL only).

    image = input_image("photos/cat.png", preprocessing)       # pipeline.extract.masks: as the backbone saw it
    rgb = overlay(image, anomaly_map, low, high, mask=mask)     # the map in colour over it
    write_png("maps/cat.png", rgb)                              # atomically

Colours (``heat_colours``) follow an inferno-like map: black, deep purple, red, orange, pale
yellow, from low to high, its luminance rising all the way, so a map reads the same in gray.
A ground-truth mask's outline is drawn in cyan (``OUTLINE_COLOUR``), a hue the map never takes.

``overlay`` scales each map from ``[low, high]`` (clipped) to the colours. Which ``low`` and
``high`` is the caller's choice, and it decides what the colours mean: one range for a whole
set of images (``ffad score --maps``: percentiles of all the run's maps) makes the images
comparable, the same colour the same anomaly score in every one; a range per image (its own
minimum and maximum) would make every image look equally hot somewhere, normal ones included.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

# Anchor colours at 0, 1/7, ..., 1, linearly interpolated between (in RGB): an approximation of
# the "inferno" map (perceptually uniform, luminance rising monotonically from black to pale yellow).
ANCHORS = np.array([
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
], dtype=np.float64)
# The outline of a ground-truth mask: cyan, which the map above never shows.
OUTLINE_COLOUR = (0, 255, 255)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (outside: clipped) -> their colours, (..., 3) uint8: 0 black, 1 pale
    yellow (``ANCHORS``). NaN is refused."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise PipelineError("cannot colour NaN values (the anomaly map holds NaN).")
    flat = np.clip(values, 0.0, 1.0).ravel()
    positions = np.linspace(0.0, 1.0, len(ANCHORS))
    channels = [np.interp(flat, positions, ANCHORS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8).reshape(*values.shape, 3)


def scaled(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """The map from [low, high] to [0, 1], clipped (float64). With ``low == high``: 1 above it,
    0 elsewhere."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)) or high < low:
        raise PipelineError(f"the colour range of an anomaly map must be finite numbers with low <= high, "
                            f"got low {low} and high {high}.")
    values = np.asarray(anomaly_map, dtype=np.float64)
    if high == low:
        return (values > high).astype(np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary of a mask (nonzero = inside), (S, S) bool: its pixels with at least one
    4-neighbour (up, down, left, right) outside it; beyond the image's edge counts as outside,
    so a mask touching the edge is outlined along it too."""
    inside = np.asarray(mask) > 0
    if inside.ndim != 2:
        raise PipelineError(f"a mask must be (height, width), got shape {inside.shape}.")
    padded = np.pad(inside, 1, constant_values=False)
    all_neighbours_inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~all_neighbours_inside


def overlay(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """``image`` (S, S, 3) uint8 with ``anomaly_map`` (S, S) over it: the map scaled from
    [low, high] (clipped; ``scaled``) to ``heat_colours``, blended as ``(1 - alpha) * image +
    alpha * colour`` (alpha 0: the image itself; 1: the map alone), rounded; then, where a
    ground-truth ``mask`` (S, S; nonzero = defect) is given, its outline (``mask_outline``) in
    ``OUTLINE_COLOUR``. The same low and high for a set of images makes them comparable (the
    module's note). Returns (S, S, 3) uint8."""
    image = np.asarray(image)
    anomaly_map = np.asarray(anomaly_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PipelineError(f"the image must be (height, width, 3) uint8, got shape {image.shape} and "
                            f"type {image.dtype}.")
    if anomaly_map.shape != image.shape[:2]:
        raise PipelineError(f"the anomaly map is {anomaly_map.shape} but its image is {image.shape[:2]}: a map "
                            f"must be at the image's resolution.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise PipelineError(f"alpha must lie between 0 and 1, got {alpha}.")
    colours = heat_colours(scaled(anomaly_map, low, high)).astype(np.float32)
    blended = np.rint((1.0 - alpha) * image.astype(np.float32) + alpha * colours)
    out = np.clip(blended, 0, 255).astype(np.uint8)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise PipelineError(f"the mask is {mask.shape} but its image is {image.shape[:2]}: a mask must be at "
                                f"the image's resolution.")
        out[mask_outline(mask)] = OUTLINE_COLOUR
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as a PNG at ``path``, atomically: encoded in memory, written
    to a temporary file beside it (named with the process id, so two writers never share one),
    then renamed over ``path`` (``os.replace``), so a reader never sees half a file. Its folder is
    made if missing."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PipelineError(f"a PNG is written from (height, width, 3) uint8, got shape {rgb.shape} and "
                            f"type {rgb.dtype}.")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
