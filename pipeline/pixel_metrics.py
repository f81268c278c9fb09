"""Pixel-level localisation metrics for anomaly maps; mask value 1 = defect pixel.

Two metrics, both fractions in [0, 1]:

* **pixel AUROC**: the area under the ROC curve with every pixel of every image as one sample
  (defect pixels positive, normal pixels negative), i.e. the probability that a random defect pixel
  scores higher than a random normal pixel, ties counting one half (the Mann-Whitney U statistic, as
  ``sklearn.metrics.roc_auc_score`` computes it).
* **AUPRO**: the normalised area under the per-region-overlap (PRO) curve up to a false positive
  rate limit, from P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger and C. Steger, "The MVTec
  Anomaly Detection Dataset: A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection",
  IJCV 129, 2021 (Section 4.2), computed as its evaluation code does. The regions are the connected
  components (8-connectivity) of each ground-truth mask. At a threshold t, PRO(t) is the mean over
  all regions of all images of the fraction of the region's pixels with a score >= t, and FPR(t) is
  the fraction of all normal pixels (those of defect-free images included) with a score >= t. The
  curve of PRO against FPR through every distinct threshold, from (0, 0) to (1, 1), is integrated
  with the trapezoid rule from FPR 0 to ``fpr_limit`` (interpolated linearly at the limit) and
  divided by ``fpr_limit``, so a perfect map gets 1. Unlike pixel AUROC it weights a small defect
  as much as a large one.

Masks are uint8 0/1, with 255 throughout an image whose mask is unknown (a defect image without a
mask file): such images are left out of both metrics. Both metrics are exact (one sort of the
normal and of the defect pixel scores, then cumulative counts), so ties are handled as they should:
all pixels with one score cross a threshold together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.errors import PipelineError

UNKNOWN = 255  # the mask value, throughout an image, of an image whose mask is unknown
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # as the MVTec AD evaluation code labels regions
_CHUNK = 1 << 22  # defect pixels per searchsorted call, to bound the temporary memory


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC and AUPRO (integrated up to ``fpr_limit``) of anomaly maps against masks.

    ``masks`` (N, H, W): 1 = defect pixel, 0 = normal pixel, 255 throughout an image whose mask is
    unknown (left out). ``maps`` (N, H, W): anomaly scores, higher = more anomalous.
    Returns ``{"pixel_auroc": ..., "aupro": ...}``; raises PipelineError on bad input.
    """
    limit = _check_limit(fpr_limit)
    pixels = _split_pixels(masks, maps)
    return {"pixel_auroc": _auroc(pixels), "aupro": _aupro(pixels, limit)}


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Area under the ROC curve over all pixels of the images with a known mask."""
    return _auroc(_split_pixels(masks, maps))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve from FPR 0 to ``fpr_limit``, divided by ``fpr_limit``."""
    limit = _check_limit(fpr_limit)
    return _aupro(_split_pixels(masks, maps), limit)


@dataclass
class _Pixels:
    normal: np.ndarray  # scores of the normal pixels, ascending
    defect: np.ndarray  # scores of the defect pixels, ascending
    weight: np.ndarray  # 1 / (size of its region) for each defect pixel, in the order of ``defect``


def _check_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise PipelineError(f"the AUPRO false positive rate limit must be in (0, 1], got {fpr_limit!r}.")
    return limit


def _split_pixels(masks: np.ndarray, maps: np.ndarray) -> _Pixels:
    """Check the input and sort the scores of the normal and of the defect pixels of the known images."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise PipelineError(f"masks and anomaly maps differ in shape: {masks.shape} and {maps.shape}.")
    if masks.ndim != 3:
        raise PipelineError(f"masks and anomaly maps must be (images, height, width) arrays, got shape {masks.shape}.")
    masks = _as_uint8_masks(masks)
    maps = _as_float_maps(maps)

    unknown_pixels = masks == UNKNOWN
    unknown = unknown_pixels.all(axis=(1, 2))
    mixed = np.flatnonzero(unknown_pixels.any(axis=(1, 2)) & ~unknown)
    if len(mixed):
        raise PipelineError(
            f"the masks of images {mixed[:5].tolist()} mix {UNKNOWN} with 0/1; {UNKNOWN} marks a whole image "
            "whose mask is unknown (binarise 0/255 mask files to 0/1 first).")
    if unknown.all():
        raise PipelineError("no image has a known mask, so there is nothing to measure the anomaly maps against.")

    # An unknown image (all 255) has neither value, so it drops out here without a copy of the rest.
    normal = maps[masks == 0]
    defect, weight = [], []
    for mask, scores in zip(masks, maps):
        is_defect = mask == 1
        if not is_defect.any():
            continue
        regions, _ = ndimage.label(is_defect, structure=_EIGHT_CONNECTED)
        region = regions[is_defect]  # the region of each defect pixel, in the order of scores[is_defect]
        defect.append(scores[is_defect])
        weight.append(1.0 / np.bincount(region)[region])
    if not defect:
        raise PipelineError("the masks of the images with a known mask have no defect pixel (value 1), "
                            "so the localisation metrics are undefined.")
    if not len(normal):
        raise PipelineError("the masks of the images with a known mask have no normal pixel (value 0), "
                            "so the localisation metrics are undefined.")
    normal.sort()
    defect_scores = np.concatenate(defect)
    order = np.argsort(defect_scores, kind="stable")
    return _Pixels(normal, defect_scores[order], np.concatenate(weight)[order])


def _as_uint8_masks(masks: np.ndarray) -> np.ndarray:
    if masks.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(masks.ravel(), minlength=256))
    elif masks.dtype.kind in "biuf":
        present = np.unique(masks)
    else:
        raise PipelineError(f"masks must be numbers (0, 1 or {UNKNOWN}), got dtype {masks.dtype}.")
    bad = [value for value in present.tolist() if value not in (0, 1, UNKNOWN)]
    if bad:
        raise PipelineError(f"masks may hold only 0 (normal), 1 (defect) and {UNKNOWN} (unknown mask), "
                            f"found {', '.join(repr(v) for v in bad[:5])}{' ...' if len(bad) > 5 else ''}.")
    return masks.astype(np.uint8, copy=False)


def _as_float_maps(maps: np.ndarray) -> np.ndarray:
    if maps.dtype.kind == "f":
        maps = maps if maps.dtype == np.float64 else maps.astype(np.float32, copy=False)
        if not np.isfinite(maps).all():
            bad = np.flatnonzero(~np.isfinite(maps).all(axis=(1, 2)))
            raise PipelineError(f"the anomaly maps of images {bad[:5].tolist()} hold NaN or infinite values.")
        return maps
    if maps.dtype.kind in "biu":
        return maps.astype(np.float64)
    raise PipelineError(f"anomaly maps must be numbers, got dtype {maps.dtype}.")


def _auroc(pixels: _Pixels) -> float:
    """Mann-Whitney: for each defect pixel, the normal pixels below it, plus half those equal to it."""
    normal, defect = pixels.normal, pixels.defect
    twice_u = 0
    for start in range(0, len(defect), _CHUNK):
        chunk = defect[start:start + _CHUNK]
        twice_u += int(np.searchsorted(normal, chunk, side="left").sum(dtype=np.int64))
        twice_u += int(np.searchsorted(normal, chunk, side="right").sum(dtype=np.int64))
    return float(twice_u / (2.0 * len(normal) * len(defect)))


def _pro_curve(pixels: _Pixels, fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The vertices (FPR, PRO) of the PRO curve, nondecreasing in FPR, as far as the first past ``fpr_limit``.

    The curve only moves right at a threshold equal to a normal pixel's score. At each distinct normal
    score v (descending) it goes from (FPR above v, PRO of the defect scores > v) to
    (FPR(v), PRO(v)); in between, defect pixels only raise PRO at a fixed FPR, which adds no area.
    """
    normal, defect = pixels.normal, pixels.defect
    n_normal, n_defect = len(normal), len(defect)
    # Only the normal scores down to the one where FPR first reaches the limit matter (one spare).
    lowest = normal[n_normal - min(n_normal, int(np.ceil(fpr_limit * n_normal)) + 1)]
    first = int(np.searchsorted(normal, lowest, side="left"))
    tail = normal[first:]
    starts = np.concatenate(([0], np.flatnonzero(tail[1:] != tail[:-1]) + 1))  # first index of each value
    values = tail[starts][::-1]
    fpr = (n_normal - first - starts)[::-1] / n_normal  # fraction of normal scores >= each value

    # PRO at k defect pixels above a threshold: their weights summed from the top, over the regions
    # (the weights sum to the number of regions; dividing by their float sum makes the top exactly 1).
    pro_top = np.cumsum(np.concatenate(([0.0], pixels.weight[::-1])))
    pro_top /= pro_top[-1]
    pro_ge = pro_top[n_defect - np.searchsorted(defect, values, side="left")]
    pro_gt = pro_top[n_defect - np.searchsorted(defect, values, side="right")]

    x = np.empty(2 * len(values) + 2)
    y = np.empty_like(x)
    x[0] = y[0] = 0.0
    x[1:-1:2] = np.concatenate(([0.0], fpr[:-1]))
    x[2:-1:2] = fpr
    y[1:-1:2] = pro_gt
    y[2:-1:2] = pro_ge
    x[-1] = y[-1] = 1.0  # the lowest threshold: every pixel at or above it
    return x, y


def _aupro(pixels: _Pixels, fpr_limit: float) -> float:
    fpr, pro = _pro_curve(pixels, fpr_limit)
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # vertices with FPR <= limit (>= 1)
    area = float(np.trapezoid(pro[:inside], fpr[:inside]))
    x0, y0 = fpr[inside - 1], pro[inside - 1]
    if x0 < fpr_limit:  # the last segment crosses the limit: cut it there
        x1, y1 = fpr[inside], pro[inside]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += (fpr_limit - x0) * (y0 + y_limit) / 2.0
    return float(min(1.0, max(0.0, area / fpr_limit)))
