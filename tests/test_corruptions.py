"""The 15 ImageNet-C / CIFAR-10-C corruptions: shapes, determinism, constants, and agreement
with the ``imagecorruptions`` package (ImageNet-C constants) and scikit-image where they run.

The package (1.1.2) is imported with three patches: a stand-in for ``pkg_resources`` (gone
from current setuptools), ``np.float_`` (removed in NumPy 2; fog needs it) and a
``gaussian(multichannel=...)`` shim (removed from scikit-image; glass_blur needs it). Its
random corruptions draw from NumPy's global legacy generator; ours from the generator they
are given, so handing ours a ``RandomState`` seeded like the global one replays the package's
draws exactly wherever both draw with the same calls (normal, poisson, uniform). Where they
cannot (glass_blur, frost draw integers; impulse_noise goes through scikit-image) or where the
package changed the definition (elastic_transform: no affine step, other constants), the test
compares with another plain reference or statistically, as each test says.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.extract import corruptions as C

HAS_PACKAGE = importlib.util.find_spec("imagecorruptions") is not None
needs_package = pytest.mark.skipif(not HAS_PACKAGE, reason="needs the corruptions extra: pip install -e '.[corruptions]'")


def picture(height: int = 224, width: int = 224, seed: int = 0) -> np.ndarray:
    """Gradients, edges and noise: something every corruption visibly changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 1.1) % 256, (yy * 0.9 + 40) % 256, ((xx + yy) // 3) % 256], -1).astype(float)
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference():
    """imagecorruptions.corruptions, importable and runnable with current NumPy and scikit-image."""
    if not HAS_PACKAGE:
        pytest.skip("needs the corruptions extra: pip install -e '.[corruptions]'")
    from skimage.filters import gaussian

    patch = pytest.MonkeyPatch()
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: os.path.join(os.path.dirname(sys.modules[package].__file__), name)
        patch.setitem(sys.modules, "pkg_resources", shim)
    patch.setattr(np, "float_", np.float64, raising=False)
    import imagecorruptions.corruptions as module

    patch.setattr(module, "gaussian", lambda image, sigma, multichannel=None, **kw:
                  gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw))
    yield module
    patch.undo()


def theirs(reference, name: str, image: np.ndarray, severity: int, seed: int = 123) -> np.ndarray:
    from PIL import Image

    np.random.seed(seed)
    return np.uint8(getattr(reference, name)(Image.fromarray(image), severity))


def ours(name: str, image: np.ndarray, severity: int, seed: int = 123) -> np.ndarray:
    # RandomState(seed) draws what np.random.seed(seed) makes the package draw.
    return C.corrupt(image, name, severity, np.random.RandomState(seed), "imagenet-c")


# --- every corruption --------------------------------------------------------------------------

@pytest.mark.parametrize("constants,shape", [("cifar10-c", (32, 32)), ("imagenet-c", (72, 56))])
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_each_corruption_keeps_the_shape_changes_the_image_and_repeats_per_image(name, constants, shape):
    if name == "frost" and not HAS_PACKAGE:
        pytest.skip("frost needs the corruptions extra")
    image = picture(*shape)
    for severity in (1, 5):
        first = C.corrupt_image(image, 7, name, severity, constants)
        assert first.shape == image.shape and first.dtype == np.uint8
        np.testing.assert_array_equal(first, C.corrupt_image(image, 7, name, severity, constants))
        assert np.abs(first.astype(int) - image).mean() > 0.5, (name, severity)
    if name in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
                "elastic_transform"):  # the random ones: another image index, other draws
        assert not np.array_equal(C.corrupt_image(image, 8, name, 5, constants), first)


def test_identity_changes_nothing_and_is_no_part_of_the_fifteen():
    image = picture(32, 40)
    np.testing.assert_array_equal(C.corrupt_image(image, 0, C.IDENTITY, 3, "cifar10-c"), image)
    assert C.IDENTITY not in C.CORRUPTIONS and len(C.CORRUPTIONS) == 15
    assert set(C.CONSTANTS) == set(C.CORRUPTIONS)
    assert all(len(table[s]) == 5 for table in C.CONSTANTS.values() for s in C.CONSTANT_SETS)


def test_constants_are_chosen_by_the_longer_side():
    assert C.constants_for(32, 32) == "cifar10-c" and C.constants_for(28, 64) == "cifar10-c"
    assert C.constants_for(65, 30) == "imagenet-c" and C.constants_for(224, 224) == "imagenet-c"


def test_the_seed_depends_on_image_corruption_and_severity_only():
    seeds = {tuple(C.corruption_seed(i, n, s)) for i in (0, 1) for n in ("fog", "snow") for s in (1, 5)}
    assert len(seeds) == 8 and C.corruption_seed(3, "fog", 2) == C.corruption_seed(3, "fog", 2)


def test_severity_orders_the_damage():
    """Each table grows with severity: the CIFAR-10-C and ImageNet-C lists are in the right
    order and the right set (ImageNet-C's are stronger)."""
    image = picture(32, 32)
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "contrast", "brightness", "jpeg_compression"):
        for constants in C.CONSTANT_SETS:
            damage = [np.abs(C.corrupt_image(image, 0, name, s, constants).astype(int) - image).mean() for s in (1, 3, 5)]
            assert damage[0] < damage[1] < damage[2], (name, constants, damage)
        assert (np.abs(C.corrupt_image(image, 0, name, 1, "cifar10-c").astype(int) - image).mean()
                < np.abs(C.corrupt_image(image, 0, name, 1, "imagenet-c").astype(int) - image).mean()), name


def test_unknown_names_and_severities_are_refused():
    with pytest.raises(PipelineError, match="gaussian_noise"):
        C.corrupt(picture(32, 32), "gausian_noise", 1, np.random.default_rng(0))
    with pytest.raises(PipelineError, match="1 to 5"):
        C.corrupt(picture(32, 32), "fog", 6, np.random.default_rng(0))


def test_corrupted_images_read_gray_and_rgb_tensors_as_rgb():
    gray = torch.from_numpy(picture(32, 32)[..., 0].copy()).unsqueeze(0)
    images = C.CorruptedImages([gray, gray], "gaussian_noise", 2, "cifar10-c")
    out = images[1]
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and len(images) == 2
    expected = C.corrupt_image(np.repeat(gray[0].numpy()[..., None], 3, axis=2), 1, "gaussian_noise", 2, "cifar10-c")
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected)


# --- against the package, the same draws -------------------------------------------------------

def assert_same_image(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal but for the rare pixel one grey level apart: sums done in another order differ in
    the last bit, which np.uint8's truncation turns into one level where a value is an integer."""
    difference = np.abs(a.astype(int) - b)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999, (what, difference.max(), (difference > 0).mean())


@needs_package
@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "zoom_blur", "fog",
                                  "contrast", "pixelate", "jpeg_compression"])
def test_matches_imagecorruptions(reference, name):
    image = picture()
    for severity in (1, 3, 5):
        assert_same_image(ours(name, image, severity), theirs(reference, name, image, severity), f"{name} {severity}")


@needs_package
def test_brightness_matches_the_hsv_round_trip_to_one_grey_level(reference):
    """Ours scales RGB by new value / old value instead of going through HSV: equal up to
    floating-point rounding, which np.uint8's truncation turns into at most one grey level."""
    image = picture()
    for severity in (1, 3, 5):
        difference = np.abs(ours("brightness", image, severity).astype(int) - theirs(reference, "brightness", image, severity))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99, (severity, (difference > 0).mean())


@needs_package
def test_snow_matches_but_for_the_border_the_package_blurs_before_cropping(reference):
    """The authors trim the zoomed snow layer to the image, then blur it; imagecorruptions
    blurs the untrimmed layer, then crops: the layers differ only within a streak's length
    (25 px) of the bottom and right edges, which the layer's half-turn copy carries to the top and
    left edges."""
    image = picture()
    for severity in (1, 3, 5):
        a, b = ours("snow", image, severity), theirs(reference, "snow", image, severity)
        np.testing.assert_array_equal(a[26:-26, 26:-26], b[26:-26, 26:-26])
        assert (a == b).mean() > 0.98


@needs_package
def test_impulse_noise_is_scikit_images_salt_and_pepper():
    from skimage.util import random_noise

    image = picture()
    for severity, amount in zip((1, 3, 5), (.03, .09, 0.27)):
        expected = np.uint8(np.clip(random_noise(image / 255., mode="s&p", amount=amount,
                                                 rng=np.random.default_rng(5)), 0, 1) * 255)
        np.testing.assert_array_equal(C.corrupt(image, "impulse_noise", severity, np.random.default_rng(5), "imagenet-c"),
                                      expected)


@needs_package
def test_glass_blur_blurs_like_scikit_image_and_damages_like_the_package(reference):
    """The Gaussian is scikit-image's (exactly); the pixel shuffling draws integers, which the
    package takes from another generator, so the whole corruption is compared by how far it moves
    the image from the original: within 10% of the package's, at every severity."""
    from skimage.filters import gaussian

    x = picture() / 255.
    np.testing.assert_allclose(C._gaussian_blur(x, 1.1), gaussian(x, sigma=1.1, channel_axis=-1), atol=1e-12)
    image = picture()
    for severity in (1, 3, 5):
        mine = np.mean([np.abs(C.corrupt_image(image, i, "glass_blur", severity, "imagenet-c").astype(int) - image).mean()
                        for i in range(2)])
        package = np.mean([np.abs(theirs(reference, "glass_blur", image, severity, seed).astype(int) - image).mean()
                           for seed in range(2)])
        assert abs(mine - package) < 0.1 * package, (severity, mine, package)


@needs_package
def test_frost_is_a_weighted_crop_of_one_of_the_five_photographs():
    """On a black image the output is c_frost x a crop of the texture the generator picked, at
    the place it picked (ImageNet-C: the photograph as it is; the package enlarges it by 1.1)."""
    black = np.zeros((224, 200, 3), np.uint8)
    for severity in (1, 5):
        out = C.corrupt(black, "frost", severity, np.random.default_rng(3), "imagenet-c")
        replay = np.random.default_rng(3)
        texture = C.frost_textures()[replay.integers(5)]
        top, left = replay.integers(0, texture.shape[0] - 224), replay.integers(0, texture.shape[1] - 200)
        weight = C.CONSTANTS["frost"]["imagenet-c"][severity - 1][1]
        np.testing.assert_array_equal(out, np.uint8(np.clip(weight * texture[top:top + 224, left:left + 200], 0, 255)))


def test_frost_without_its_photographs_names_the_extra(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    C.frost_textures.cache_clear()
    monkeypatch.setattr(metadata, "distribution", missing)
    try:
        with pytest.raises(PipelineError, match=r"pip install -e '\.\[corruptions\]'"):
            C.frost_textures()
    finally:
        C.frost_textures.cache_clear()


# --- elastic_transform: its parts against plain computations -----------------------------------

def test_affine_from_points_maps_the_three_points_and_warp_translates():
    rng = np.random.default_rng(0)
    source, target = rng.uniform(0, 30, (3, 2)), rng.uniform(0, 30, (3, 2))
    matrix = C.affine_from_points(source, target)
    np.testing.assert_allclose(np.hstack([source, np.ones((3, 1))]) @ matrix.T, target, atol=1e-9)
    image = rng.random((20, 24, 3))
    shifted = C.warp_affine(image, np.array([[1.0, 0, 3], [0, 1.0, 2]]))  # content moves 3 right, 2 down
    np.testing.assert_allclose(shifted[2:, 3:], image[:-2, :-3], atol=1e-12)


def test_elastic_without_displacement_is_the_drawn_affine_warp():
    """CIFAR-10-C's severity 1 has alpha 0: the output is the image warped by the affine map
    that takes the three points around the centre to their jittered copies."""
    image = picture(32, 32)
    out = C.corrupt(image, "elastic_transform", 1, np.random.default_rng(11), "cifar10-c")
    replay = np.random.default_rng(11)
    source = np.float32([[26, 26], [26, 6], [6, 6]])  # centre (16, 16) +- 32 // 3
    target = source + replay.uniform(-32 * 0.08, 32 * 0.08, size=(3, 2)).astype(np.float32)
    warped = C.warp_affine(image / 255., C.affine_from_points(source, target))
    np.testing.assert_allclose(out, np.uint8(np.clip(warped, 0, 1) * 255), atol=1)


def test_motion_blur_kernel_is_the_explicit_weighted_sum_along_the_direction():
    """Angle 0 blurs along rows: pixel (r, c) = sum_i w_i x[r, min(c + i, W - 1)]."""
    rng = np.random.default_rng(0)
    x = rng.random((9, 12))
    radius, sigma = 3, 1.5
    w = np.exp(-np.arange(7) ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    expected = np.zeros_like(x)
    for r in range(9):
        for c in range(12):
            expected[r, c] = sum(w[i] * x[r, min(c + i, 11)] for i in range(7))
    np.testing.assert_allclose(C.motion_blur_kernel(x, radius, sigma, 0.0), expected, atol=1e-12)
