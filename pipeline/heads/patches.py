"""What the patch heads (PatchCore, PaDiM) share: the cache's full-resolution maps of several
stages brought to one grid, and a grid of patch scores made an anomaly map at the input
resolution.

The cache stores full-resolution maps as ``Features.trunk`` (stage -> (N, C, H, W), float16;
``pipeline.extract --patch-maps``). Stages at different strides (EfficientNet-Lite stride8 at
28x28 and stride16 at 14x14 for a 224 input; ResNet layer2 and layer3) are brought to the
finest grid by bilinear upsampling, as PatchCore and PaDiM do, then concatenated along channels.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.heads.base import Features

# PatchCore and PaDiM both smooth the upsampled map with a Gaussian of sigma 4 pixels (at the
# 224-pixel input; anomalib's default too).
MAP_SIGMA = 4.0


def patch_layers(features: Features, asked: Sequence[str] | None, head: str) -> list[str]:
    """The stages a patch head reads, finest grid first: those ``asked`` (all the cache holds
    when None), refused with the stages there are when one is missing or none is stored."""
    there = sorted(features.trunk, key=lambda name: -features.trunk[name].shape[-1])
    if not there:
        raise PipelineError(f"the {head} head reads patch features: the cache's full-resolution maps, which this one "
                            f"does not hold. Extract with --patch-maps patch (the backbone's two patch stages; "
                            f"with --overwrite for an existing cache).")
    if asked is None:
        return there
    missing = [name for name in asked if name not in features.trunk]
    if missing:
        raise PipelineError(f"the {head} head was asked for the maps {', '.join(missing)}, which the cache does not "
                            f"hold; it holds {', '.join(there)} (extract --patch-maps).")
    return sorted(asked, key=lambda name: -features.trunk[name].shape[-1])


def on_one_grid(features: Features, layers: Sequence[str], rows: slice | np.ndarray = slice(None),
                smooth: int = 1) -> torch.Tensor:
    """The maps of ``layers`` for ``rows``, float32, each (with ``smooth`` > 1) averaged over
    its ``smooth`` x ``smooth`` neighbourhood (PatchCore's locally aware patch features), then
    brought to the first layer's grid (bilinear) and concatenated: (n, sum C, H, W)."""
    parts = []
    for name in layers:
        part = torch.as_tensor(np.asarray(features.trunk[name][rows]), dtype=torch.float32)
        if smooth > 1:
            part = F.avg_pool2d(part, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
        if parts and part.shape[-2:] != parts[0].shape[-2:]:
            part = F.interpolate(part, size=parts[0].shape[-2:], mode="bilinear", align_corners=False)
        parts.append(part)
    return torch.cat(parts, dim=1)


def row_blocks(count: int, block: int) -> Iterator[slice]:
    """Slices of at most ``block`` rows covering ``count`` rows (patch features of many images
    are large: heads work a block of images at a time)."""
    for start in range(0, count, max(1, block)):
        yield slice(start, min(start + block, count))


def upsample_and_smooth(patch_scores: np.ndarray | torch.Tensor, size: int, sigma: float = MAP_SIGMA) -> np.ndarray:
    """Patch score grids (N, h, w) -> anomaly maps (N, size, size), float32: bilinear upsampling
    to the input resolution, then a Gaussian blur of ``sigma`` pixels (scaled with the input
    side from the papers' 224) as PatchCore and PaDiM do."""
    grids = torch.as_tensor(np.asarray(patch_scores), dtype=torch.float32)
    if grids.ndim != 3:
        raise PipelineError(f"patch scores must be (images, height, width), got shape {tuple(grids.shape)}.")
    maps = F.interpolate(grids.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    sigma = sigma * size / 224
    if sigma > 0:
        radius = int(4 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's truncation at 4 sigma
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel /= kernel.sum()
        # Separable: rows then columns, edges mirrored (scipy.ndimage's mode="mirror").
        maps = F.pad(maps, (radius, radius, 0, 0), mode="reflect" if radius < size else "replicate")
        maps = F.conv2d(maps, kernel.view(1, 1, 1, -1))
        maps = F.pad(maps, (0, 0, radius, radius), mode="reflect" if radius < size else "replicate")
        maps = F.conv2d(maps, kernel.view(1, 1, -1, 1))
    return maps.squeeze(1).numpy()
