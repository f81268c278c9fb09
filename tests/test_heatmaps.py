"""Anomaly maps over their images (pipeline.heatmaps): the colour map, the overlay and its mask
outline, the atomic PNG writer, and the image as the backbone saw it (Preprocessing.geometry,
whose split from normalisation leaves the preprocessing's output bit for bit as it was)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.extract.datasets import decode_image_file
from pipeline.extract.preprocess import INTERPOLATIONS, NORMALISATIONS, Preprocessing
from pipeline.extract.masks import input_image
from pipeline.heatmaps import ANCHORS, OUTLINE_COLOUR, heat_colours, mask_outline, overlay, scaled, write_png

LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709


def rng_image(seed: int, shape=(16, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- the colour map -----------------------------------------------------------------------------

def test_colours_run_from_black_to_pale_yellow_with_rising_luminance():
    colours = heat_colours(np.linspace(0.0, 1.0, 1001))
    assert colours.shape == (1001, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0], ANCHORS[0])
    np.testing.assert_array_equal(colours[-1], ANCHORS[-1])
    assert np.all(np.diff(ANCHORS @ LUMA) > 0)  # the anchors, so every linear piece between them
    coarse = heat_colours(np.linspace(0.0, 1.0, 64)).astype(float) @ LUMA
    assert np.all(np.diff(coarse) > 0)
    fine = colours.astype(float) @ LUMA
    assert np.all(np.diff(fine) > -0.75)  # only the rounding to whole values can step back
    # Any shape; outside [0, 1] clipped; NaN refused.
    grid = np.linspace(0, 1, 20).reshape(4, 5)
    assert heat_colours(grid).shape == (4, 5, 3)
    np.testing.assert_array_equal(heat_colours(grid)[1, 2], heat_colours(grid[1, 2]))
    np.testing.assert_array_equal(heat_colours([-3.0, 7.0]), heat_colours([0.0, 1.0]))
    with pytest.raises(PipelineError, match="NaN"):
        heat_colours([0.2, np.nan])


# --- the overlay ------------------------------------------------------------------------------

def test_overlay_is_the_image_at_alpha_0_and_the_colours_at_alpha_1():
    image = rng_image(0)
    heat = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)
    out = overlay(image, heat, -1.0, 1.0, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(overlay(image, heat, -1.0, 1.0, alpha=1.0), heat_colours((heat + 1.0) / 2.0))
    half = overlay(image, heat, -1.0, 1.0)  # alpha 0.5: the mean, rounded
    expected = np.rint(0.5 * image.astype(np.float32) + 0.5 * heat_colours((heat + 1.0) / 2.0).astype(np.float32))
    np.testing.assert_array_equal(half, expected.astype(np.uint8))
    with pytest.raises(PipelineError, match="alpha"):
        overlay(image, heat, 0, 1, alpha=1.5)
    with pytest.raises(PipelineError, match="resolution"):
        overlay(image, heat[:8], 0, 1)
    with pytest.raises(PipelineError, match="low <= high"):
        overlay(image, heat, 1, 0)


def test_values_outside_the_range_are_clipped_to_its_ends():
    image = rng_image(2, (4, 4, 3))
    heat = np.array([[-100.0, 2.0, 3.0, 4.0],
                     [5.0, 6.0, 100.0, 1e30],
                     [-np.inf, np.inf, 2.0, 6.0],
                     [3.5, 4.5, 5.5, 0.0]])
    low, high = 2.0, 6.0
    out = overlay(image, heat, low, high, alpha=1.0)
    np.testing.assert_array_equal(out, overlay(image, np.clip(heat, low, high), low, high, alpha=1.0))
    below = heat <= low
    above = heat >= high
    assert below.sum() == 5 and above.sum() == 5
    assert (out[below] == ANCHORS[0]).all() and (out[above] == ANCHORS[-1]).all()
    np.testing.assert_array_equal(scaled(heat, low, high), np.clip((heat - low) / (high - low), 0, 1))
    # A range of one value: above it the top colour, else the bottom one.
    np.testing.assert_array_equal(scaled(heat, 4.0, 4.0), (heat > 4.0).astype(float))


def outline_by_loop(mask: np.ndarray) -> np.ndarray:
    """A mask pixel with a 4-neighbour outside the mask (or outside the image)."""
    h, w = mask.shape
    found = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                y, x = i + di, j + dj
                if not (0 <= y < h and 0 <= x < w) or not mask[y, x]:
                    found[i, j] = True
    return found


def test_the_mask_outline_is_exactly_its_boundary():
    mask = np.zeros((9, 10), np.uint8)
    mask[1:6, 2:8] = 1      # a rectangle ...
    mask[3, 4:6] = 0        # ... with a hole: its rim is boundary too
    mask[7, 0] = 255        # one pixel at the edge (any nonzero value is the mask)
    mask[6:9, 6:10] = 1     # a block in the corner, touching the rectangle, outlined along the image's edge
    expected = outline_by_loop(mask > 0)
    np.testing.assert_array_equal(mask_outline(mask), expected)
    # Hand-checked pixels: the rectangle's corner, an interior pixel, the hole's rim, the corner block.
    assert expected[1, 2] and not expected[2, 3] and expected[2, 4] and expected[4, 5] and not expected[4, 3]
    assert expected[8, 7] and expected[7, 9] and not expected[7, 7] and expected[7, 0] and not expected[5, 6]
    image = rng_image(3, (9, 10, 3))
    heat = np.random.default_rng(4).random((9, 10))
    plain = overlay(image, heat, 0.0, 1.0)
    marked = overlay(image, heat, 0.0, 1.0, mask=mask)
    assert (marked[expected] == OUTLINE_COLOUR).all()
    np.testing.assert_array_equal(marked[~expected], plain[~expected])
    np.testing.assert_array_equal(overlay(image, heat, 0.0, 1.0, mask=np.zeros((9, 10), np.uint8)), plain)
    with pytest.raises(PipelineError, match="mask"):
        overlay(image, heat, 0.0, 1.0, mask=mask[:4])


# --- the PNG ----------------------------------------------------------------------------------

def test_write_png_round_trips_and_replaces_atomically(tmp_path):
    first, second = rng_image(5, (7, 11, 3)), rng_image(6, (7, 11, 3))
    path = write_png(tmp_path / "sub" / "a.png", first)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), first)
    write_png(path, second)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), second)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.png"]  # no temporary file left
    with pytest.raises(PipelineError, match="uint8"):
        write_png(tmp_path / "b.png", first.astype(np.float32))
    assert not (tmp_path / "b.png").exists()


# --- the image as the backbone saw it -----------------------------------------------------------

def write_image(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("resize", ["resize", "resize_crop"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_input_image_is_the_preprocessing_before_normalisation(tmp_path, resize, interpolation):
    files = [write_image(tmp_path / "wide.png", rng_image(7, (30, 45, 3))),
             write_image(tmp_path / "gray.png", rng_image(8, (50, 40)))]
    for normalisation in NORMALISATIONS:
        preprocessing = Preprocessing(image_size=24, resize=resize, interpolation=interpolation,
                                      normalisation=normalisation)
        plain = Preprocessing(image_size=24, resize=resize, interpolation=interpolation, normalisation="none")
        for file in files:
            image = input_image(file, preprocessing)
            assert image.shape == (24, 24, 3) and image.dtype == np.uint8
            seen = plain([decode_image_file(file)])[0]  # what the backbone got, less the normalisation
            expected = seen.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(image, expected)
    # An image already at the input's size and straight resize: its own pixels.
    exact = write_image(tmp_path / "exact.png", rng_image(9, (24, 24, 3)))
    if resize == "resize":
        np.testing.assert_array_equal(input_image(exact, Preprocessing(image_size=24, interpolation=interpolation)),
                                      np.asarray(Image.open(exact)))


def old_batch(pre: Preprocessing, batch: torch.Tensor) -> torch.Tensor:
    """Preprocessing._batch as it was before its geometry and normalisation were split."""
    mode = INTERPOLATIONS[pre.interpolation]
    batch = pre.rgb(batch).float().div_(255.0)
    if pre.resize == "resize":
        batch = TF.resize(batch, [pre.image_size, pre.image_size], interpolation=mode, antialias=True)
    else:
        batch = TF.resize(batch, round(pre.image_size * 256 / 224), interpolation=mode, antialias=True)
        batch = TF.center_crop(batch, [pre.image_size, pre.image_size])
    stats = NORMALISATIONS[pre.normalisation]
    if stats is not None:
        batch = TF.normalize(batch, list(stats[0]), list(stats[1]))
    return batch.contiguous()


@pytest.mark.parametrize("resize", ["resize", "resize_crop"])
def test_preprocessing_output_is_bit_identical_after_the_split(resize):
    batch = torch.from_numpy(rng_image(10, (3, 3, 37, 29))).clone()
    mixed = [torch.from_numpy(rng_image(11, (1, 20, 33))), torch.from_numpy(rng_image(12, (4, 41, 26)))]
    for interpolation in INTERPOLATIONS:
        for normalisation in NORMALISATIONS:
            pre = Preprocessing(image_size=17, resize=resize, interpolation=interpolation,
                                normalisation=normalisation)
            assert torch.equal(pre(batch), old_batch(pre, batch))
            assert torch.equal(pre(mixed), torch.cat([old_batch(pre, im.unsqueeze(0)) for im in mixed]))
            assert torch.equal(pre.normalise(pre.geometry(batch)), old_batch(pre, batch))
