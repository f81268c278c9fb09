import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from pipeline.errors import PipelineError
from pipeline.pixel_metrics import aupro, pixel_auroc, pixel_metrics


def reference_aupro(masks, maps, fpr_limit):
    """The MVTec AD recipe, slowly: every distinct score as a threshold, regions by scipy.ndimage.label."""
    known = ~(masks == 255).all(axis=(1, 2))
    masks, maps = masks[known], maps[known].astype(np.float64)
    regions = []
    for mask, scores in zip(masks, maps):
        labels, count = ndimage.label(mask == 1, structure=np.ones((3, 3)))
        regions += [scores[labels == r] for r in range(1, count + 1)]
    normal = maps[masks == 0]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(region >= t) for region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    fprs, pros = np.array(fprs), np.array(pros)
    inside = fprs <= fpr_limit
    x, y = list(fprs[inside]), list(pros[inside])
    if x[-1] < fpr_limit:
        after = np.flatnonzero(~inside)[0]
        x0, y0, x1, y1 = fprs[after - 1], pros[after - 1], fprs[after], pros[after]
        x.append(fpr_limit)
        y.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return np.trapezoid(y, x) / fpr_limit


def random_case(seed, n=6, size=(12, 14), levels=None, blank=2):
    """Random blob masks (several regions per image, ``blank`` images without defects) and maps that
    are higher on defects; ``levels`` rounds the maps onto that many values so scores tie."""
    rng = np.random.default_rng(seed)
    masks = (ndimage.gaussian_filter(rng.normal(size=(n, *size)), sigma=(0, 1.2, 1.2)) > 0.25).astype(np.uint8)
    masks[:blank] = 0
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    if levels:
        maps = np.round((maps - maps.min()) / np.ptp(maps) * (levels - 1))
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("levels", [None, 3, 8])
def test_pixel_auroc_matches_sklearn(levels):
    masks, maps = random_case(levels or 0, n=8, levels=levels)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_metrics(masks, maps)["pixel_auroc"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("levels", [None, 2, 4, 12])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_slow_reference(levels, fpr_limit):
    masks, maps = random_case(10 + (levels or 0), levels=levels)
    n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    assert n_regions > len(masks) - 2  # several regions on some images
    expected = reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-6)
    assert pixel_metrics(masks, maps, fpr_limit)["aupro"] == pytest.approx(expected, abs=1e-6)


def test_aupro_with_the_limit_on_a_vertex_and_float64_maps():
    # 10 normal pixels with distinct scores: FPR steps of 0.1, so a limit of 0.3 falls on a vertex.
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    masks[1, 3, 3] = 1
    masks[1, 0, 0] = 1
    rng = np.random.default_rng(5)
    maps = rng.permutation(32).reshape(2, 4, 4).astype(np.float64)
    for limit in (0.3, 0.1, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(reference_aupro(masks, maps, limit), abs=1e-9)


def test_regions_are_eight_connected():
    masks = np.zeros((1, 5, 5), np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1  # diagonal neighbours: one region, not two
    masks[0, 4, 4] = 1
    maps = np.zeros((1, 5, 5), np.float32)
    maps[0, 1, 1] = maps[0, 4, 4] = 1.0  # one region half found, the other whole: PRO 0.75
    # At the threshold 1, FPR 0 and PRO (1/2 + 1) / 2; below it everything is found.
    expected = (0.75 * 0.3 + (0.3 ** 2 / 2) * 0.25) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps, 0.3), abs=1e-12)


def test_known_values():
    masks, _ = random_case(3)
    perfect = pixel_metrics(masks, masks.astype(np.float32))
    assert perfect == {"pixel_auroc": 1.0, "aupro": 1.0}
    assert all(type(value) is float for value in perfect.values())
    assert pixel_auroc(masks, -masks.astype(np.float32)) == 0.0
    assert pixel_auroc(masks, np.full(masks.shape, 0.7, np.float32)) == 0.5
    # A constant map finds every region at the only threshold, where FPR jumps to 1: PRO = FPR.
    assert aupro(masks, np.zeros(masks.shape, np.float32), 0.3) == pytest.approx(0.15)


def test_unknown_masks_are_left_out():
    masks, maps = random_case(4, n=8, levels=5)
    unknown = [1, 4, 6]
    with_unknown = masks.copy()
    with_unknown[unknown] = 255
    # Whatever the maps of the unknown images hold, they count for nothing.
    maps_with_unknown = maps.copy()
    maps_with_unknown[unknown] = 1e6 * np.random.default_rng(0).normal(size=maps[unknown].shape)
    kept = np.setdiff1d(np.arange(8), unknown)
    assert pixel_metrics(with_unknown, maps_with_unknown) == pixel_metrics(masks[kept], maps[kept])


def test_masks_given_as_bool_or_int():
    masks, maps = random_case(6)
    expected = pixel_metrics(masks, maps)
    assert pixel_metrics(masks.astype(bool), maps) == expected
    assert pixel_metrics(masks.astype(np.int64), maps) == expected


@pytest.mark.parametrize("change, message", [
    (lambda m, s: (m[:, :-1], s), "differ in shape"),
    (lambda m, s: (m[0], s[0]), "(images, height, width)"),
    (lambda m, s: (m, np.where(m == 1, np.nan, s)), "NaN or infinite"),
    (lambda m, s: (m, np.where(m == 1, np.inf, s)), "NaN or infinite"),
    (lambda m, s: (m * 2, s), "found 2"),
    (lambda m, s: (m * 255, s), "mix 255 with 0/1"),
    (lambda m, s: (m.astype(np.float32) / 2, s), "found 0.5"),
    (lambda m, s: (np.zeros_like(m), s), "no defect pixel"),
    (lambda m, s: (np.ones_like(m), s), "no normal pixel"),
    (lambda m, s: (np.where(m.any(axis=(1, 2), keepdims=True), 255, m).astype(np.uint8), s), "no defect pixel"),
    (lambda m, s: (np.full_like(m, 255), s), "no image has a known mask"),
])
def test_refusals(change, message):
    masks, maps = change(*random_case(7))
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pixel_metrics(masks, maps)


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5])
def test_refuses_a_bad_fpr_limit(limit):
    masks, maps = random_case(8)
    with pytest.raises(PipelineError, match="limit"):
        aupro(masks, maps, limit)
