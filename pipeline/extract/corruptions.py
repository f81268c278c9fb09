"""The 15 common corruptions of ImageNet-C and CIFAR-10-C (Hendrycks and Dietterich, ICLR 2019),
at severities 1 to 5, for the robustness protocol's corrupted test splits.

Implemented here with NumPy, SciPy and PIL, following the definitions and constants of the
authors' scripts (github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py and
make_cifar_c.py), which need scikit-image, OpenCV and ImageMagick; the ``imagecorruptions``
package (1.1.2, the last release) no longer runs glass_blur and fog with current scikit-image
and NumPy, and has only the ImageNet-C constants. Where this code departs from the scripts:

- motion_blur and snow's streaks: ImageMagick's MotionBlurImage is replaced by its kernel,
  written out (``motion_blur_kernel``): weights exp(-i^2 / 2 sigma^2), i = 0 .. 2 radius, along
  the blur direction, with edge pixels repeated past the border, as ImageMagick does (and as
  imagecorruptions re-implemented it, except that it stops at a border it cannot reach).
- frost overlays the authors' five frost photographs, which the ``imagecorruptions`` package
  ships (the optional extra ``.[corruptions]``); they are read from its files, its code is not
  run. Textures are rescaled bilinearly (CIFAR: to 0.2 of their size, as the CIFAR script does
  with OpenCV; any set: enlarged as imagecorruptions does when the image is larger).
- sizes: the scripts assume 32x32 (CIFAR) or 224x224 (ImageNet) images; here every corruption
  works on any size, as in imagecorruptions (fog's fractal on the next power of two, crops of
  the frost texture the size of the image), with the published constants in pixels.
- glass_blur keeps the scripts' actual effect: their pixel "swap" ``x[h, w], x[h', w'] =
  x[h', w'], x[h, w]`` assigns through NumPy views, so it copies x[h', w'] into x[h, w] and
  leaves x[h', w'] as it was; the published data sets were made that way.

Each corruption draws its randomness from the NumPy generator it is given; ``corrupt_image``
seeds one from (image index, corruption, severity), so an image is corrupted the same way in
every run, worker and resumed chunk. Outputs are uint8, truncated like the scripts' np.uint8.

Two constant sets, chosen by image size (``constants_for``): CIFAR-10-C's (made for 32x32) for
images whose longer side is at most 64 pixels, ImageNet-C's (made for 224x224) above.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from pipeline.errors import PipelineError, choice_error
# The names live there, torch- and NumPy-free, for the command's --help and params.yaml's check.
from pipeline.extract.names import CONSTANT_SETS, CORRUPTIONS, IDENTITY, SEVERITIES, SMALL_IMAGE_SIDE

FROST_EXTRA = "pip install -e '.[corruptions]' (the imagecorruptions package, for its frost photographs)"


def constants_for(height: int, width: int) -> str:
    """The constant set for an image of this size: CIFAR-10-C's up to 64 pixels on the longer
    side (made for 32x32: MNIST, SVHN, CIFAR), ImageNet-C's above (made for 224x224)."""
    return "cifar10-c" if max(height, width) <= SMALL_IMAGE_SIDE else "imagenet-c"


def _arange(stop: float, step: float) -> np.ndarray:
    return np.arange(1, stop, step)  # zoom factors exactly as the scripts write them


# Per corruption and constant set: the parameters of severities 1..5 (the scripts' ``c`` lists).
CONSTANTS: dict[str, dict[str, list]] = {
    "gaussian_noise": {"cifar10-c": [0.04, 0.06, .08, .09, .10],
                       "imagenet-c": [.08, .12, 0.18, 0.26, 0.38]},
    "shot_noise": {"cifar10-c": [500, 250, 100, 75, 50],
                   "imagenet-c": [60, 25, 12, 5, 3]},
    "impulse_noise": {"cifar10-c": [.01, .02, .03, .05, .07],
                      "imagenet-c": [.03, .06, .09, 0.17, 0.27]},
    # (disk radius, sigma of the anti-aliasing blur)
    "defocus_blur": {"cifar10-c": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
                     "imagenet-c": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]},
    # (sigma, largest pixel displacement, iterations)
    "glass_blur": {"cifar10-c": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
                   "imagenet-c": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]},
    # (radius, sigma) of the motion-blur kernel
    "motion_blur": {"cifar10-c": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
                    "imagenet-c": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]},
    "zoom_blur": {"cifar10-c": [_arange(1.06, 0.01), _arange(1.11, 0.01), _arange(1.16, 0.01),
                                _arange(1.21, 0.01), _arange(1.26, 0.01)],
                  "imagenet-c": [_arange(1.11, 0.01), _arange(1.16, 0.01), _arange(1.21, 0.02),
                                 _arange(1.26, 0.02), _arange(1.31, 0.03)]},
    # (mean, std, zoom, threshold of the snow layer, streak radius, streak sigma, image weight)
    "snow": {"cifar10-c": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                           (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                           (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
             "imagenet-c": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                            (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]},
    # (image weight, frost weight)
    "frost": {"cifar10-c": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
              "imagenet-c": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]},
    # (fog strength, wibble decay of the plasma fractal)
    "fog": {"cifar10-c": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
            "imagenet-c": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)]},
    "brightness": {"cifar10-c": [.05, .1, .15, .2, .3],
                   "imagenet-c": [.1, .2, .3, .4, .5]},
    "contrast": {"cifar10-c": [.75, .5, .4, .3, 0.15],
                 "imagenet-c": [0.4, .3, .2, .1, .05]},
    # (alpha, sigma, affine jitter), in pixels: CIFAR's are fractions of 32, ImageNet's of 244
    # ("244 should have been 224, but ultimately nothing is incorrect", the script says).
    "elastic_transform": {"cifar10-c": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                                        (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                                        (32 * 0.1, 32 * 0.03, 32 * 0.03)],
                          "imagenet-c": [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                                         (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                                         (244 * 0.12, 244 * 0.01, 244 * 0.02)]},
    # fraction of the size the image is reduced to
    "pixelate": {"cifar10-c": [0.95, 0.9, 0.85, 0.75, 0.65],
                 "imagenet-c": [0.6, 0.5, 0.4, 0.3, 0.25]},
    # JPEG quality
    "jpeg_compression": {"cifar10-c": [80, 65, 58, 50, 40],
                         "imagenet-c": [25, 18, 15, 10, 7]},
}
# The CIFAR script shrinks the frost photographs to a fifth before cropping 32x32 from them.
FROST_SCALE = {"cifar10-c": 0.2, "imagenet-c": 1.0}


# --- helpers ------------------------------------------------------------------------------------

def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's filters.gaussian(x, sigma, channel_axis=-1): each channel, edges repeated."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma) (sigma > 0)."""
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The scripts' defocus kernel: a disk of ``radius`` on a grid of at least 17x17, normalised,
    then blurred by a 3x3 (5x5 for radii over 8) Gaussian of sigma ``alias_blur`` to anti-alias
    it (OpenCV's GaussianBlur, whose border is BORDER_REFLECT_101, SciPy's "mirror")."""
    span = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    size = 3 if radius <= 8 else 5
    xx, yy = np.meshgrid(span, span)
    aliased = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    aliased /= aliased.sum()
    g = _gaussian_kernel_1d(size, alias_blur)
    return ndimage.correlate(aliased, np.outer(g, g), mode="mirror").astype(np.float32)


def motion_blur_kernel(image: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage(radius, sigma, angle), written out: each output pixel is
    the weighted sum of the 2 radius + 1 pixels behind it along ``angle`` (degrees), with weights
    exp(-i^2 / 2 sigma^2) normalised to sum 1, and edge pixels repeated past the image border.
    ``image`` is (H, W) or (H, W, C); returns float64 of the same shape."""
    width = 2 * int(radius) + 1  # ImageMagick's GetOptimalKernelWidth1D for a given radius
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    direction = (width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle)))
    length = math.hypot(*direction)
    pad = width
    spec = ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(np.asarray(image, dtype=np.float64), spec, mode="edge")
    h, w = image.shape[:2]
    blurred = np.zeros(image.shape, dtype=np.float64)
    for i in range(width):
        # ImageMagick's offsets: ceil(i * point / hypot - 0.5), sampled ahead of the pixel.
        dy = math.ceil(i * direction[0] / length - 0.5)
        dx = math.ceil(i * direction[1] / length - 0.5)
        blurred += weights[i] * padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return blurred


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of ``x`` (H, W, C) by ``factor`` (bilinear) and trim back to H x W."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = ndimage.zoom(x[top:top + ch, left:left + cw], (factor, factor, 1), order=1)
    trim_top, trim_left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return zoomed[trim_top:trim_top + h, trim_left:trim_left + w]


def plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """A size x size height map in [0, 1] by the diamond-square algorithm (``size`` a power of
    two), drawing its perturbations in the scripts' order."""
    if size & (size - 1):
        raise ValueError(f"the plasma fractal's size must be a power of two, got {size}")
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # squares: the centre of each square of corners ``step`` apart
        corners = heights[0:size:step, 0:size:step]
        total = corners + np.roll(corners, shift=-1, axis=0)
        total += np.roll(total, shift=-1, axis=1)
        heights[half:size:step, half:size:step] = wibbled_mean(total)
        # diamonds: the edge midpoints, from the two centres and two corners around each
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        total = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        heights[0:size:step, half:size:step] = wibbled_mean(total)
        total = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        heights[half:size:step, 0:size:step] = wibbled_mean(total)
        step //= 2
        wibble /= wibble_decay
    heights -= heights.min()
    return heights / heights.max()


def _next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _luma(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB2GRAY weights."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C), bilinear on pixel centres as OpenCV's INTER_LINEAR (no
    anti-aliasing when shrinking, like the CIFAR script's cv2.resize of the frost photographs)."""
    h, w = image.shape[:2]
    rows = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    cols = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    image = np.asarray(image, dtype=np.float64)
    return np.stack([ndimage.map_coordinates(image[..., k], grid, order=1) for k in range(image.shape[2])], axis=-1)


def affine_from_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 affine map taking three (x, y) points to three others (OpenCV's getAffineTransform)."""
    design = np.hstack([source.astype(np.float64), np.ones((3, 1))])
    return np.linalg.solve(design, target.astype(np.float64)).T


def warp_affine(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """OpenCV's warpAffine(x, matrix, BORDER_REFLECT_101): output pixel (x, y) is the input at
    matrix^-1 (x, y), bilinear; (x, y) are (column, row)."""
    h, w = x.shape[:2]
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    src_cols = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    src_rows = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    return np.stack([ndimage.map_coordinates(x[..., k], [src_rows, src_cols], order=1, mode="mirror")
                     for k in range(x.shape[2])], axis=-1)


@lru_cache(maxsize=None)
def frost_textures() -> tuple[np.ndarray, ...]:
    """The authors' five frost photographs (frost1..5; the scripts never draw frost6), as RGB
    uint8, from the files of the imagecorruptions package (read once per process)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from PIL import Image

    try:
        package = distribution("imagecorruptions")
    except PackageNotFoundError:
        raise PipelineError(f"the frost corruption overlays the frost photographs of ImageNet-C, which this project "
                            f"takes from the imagecorruptions package: {FROST_EXTRA}. Or leave frost out of "
                            f"--corruptions.") from None
    textures = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        path = package.locate_file(f"imagecorruptions/frost/{name}")
        try:
            with Image.open(path) as image:
                textures.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise PipelineError(f"cannot read the frost photograph {path} ({error}); reinstall: {FROST_EXTRA}.") from None
    return tuple(textures)


# --- the corruptions ----------------------------------------------------------------------------
# Each takes the image as float64 (H, W, 3) in 0..255, the severity's parameters and a generator,
# and returns float 0..255 (clipped).

def gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on each channel value independently, as scikit-image's random_noise(s&p)."""
    x = x / 255.
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return np.clip(x, 0, 1) * 255


def defocus_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    kernel = disk_kernel(radius=c[0], alias_blur=c[1])
    x = x / 255.
    channels = [ndimage.correlate(x[..., k], kernel, mode="mirror") for k in range(x.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0, 1) * 255


def glass_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = c
    x = np.uint8(_gaussian_blur(x / 255., sigma) * 255)
    h, w = x.shape[:2]
    heights, widths = range(h - delta, delta, -1), range(w - delta, delta, -1)
    # One draw for every pixel visit, in the scripts' visiting order ((dx, dy) per pixel).
    offsets = rng.integers(-delta, delta, size=(iterations, len(heights), len(widths), 2))
    for i in range(iterations):
        for a, row in enumerate(heights):
            for b, col in enumerate(widths):
                dx, dy = offsets[i, a, b]
                x[row, col] = x[row + dy, col + dx]  # the scripts' "swap", as it acts (see above)
    return np.clip(_gaussian_blur(x / 255., sigma), 0, 1) * 255


def motion_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-45, 45)
    return np.clip(motion_blur_kernel(x, radius=c[0], sigma=c[1], angle=angle), 0, 255)


def zoom_blur(x: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = (x / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for factor in c:
        out += clipped_zoom(x, factor)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    x = (x / 255.).astype(np.float32)
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer[..., 0], 0, 1)
    # Streaks: the motion blur ImageMagick gives the scripts, on the 8-bit layer they encode.
    layer = motion_blur_kernel(layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45))
    layer = (np.round(layer * 255).astype(np.uint8) / 255.)[..., np.newaxis]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _luma(x)[..., np.newaxis] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x: np.ndarray, c: tuple, rng: np.random.Generator, constants: str) -> np.ndarray:
    h, w = x.shape[:2]
    texture = _frost_texture(int(rng.integers(5)), constants, h, w)
    th, tw = texture.shape[:2]
    top, left = rng.integers(0, th - h), rng.integers(0, tw - w)
    return np.clip(c[0] * x + c[1] * texture[top:top + h, left:left + w], 0, 255)


@lru_cache(maxsize=64)
def _frost_texture(index: int, constants: str, height: int, width: int) -> np.ndarray:
    """Frost photograph ``index`` at the constant set's scale, enlarged (imagecorruptions' rule:
    to 1.1 times what the image needs) when it is not larger than a height x width image."""
    texture = frost_textures()[index]
    th, tw = (round(side * FROST_SCALE[constants]) for side in texture.shape[:2])
    if th <= height or tw <= width:
        scale = 1.1 * max(height / th, width / tw, 1.0)
        th, tw = math.ceil(th * scale), math.ceil(tw * scale)
    return texture if (th, tw) == texture.shape[:2] else _resize_bilinear(texture, th, tw)


def fog(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    x = x / 255.
    max_value = x.max()
    x += c[0] * plasma_fractal(_next_power_of_two(max(h, w)), c[1], rng)[:h, :w][..., np.newaxis]
    return np.clip(x * max_value / (max_value + c[0]), 0, 1) * 255


def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """The scripts add ``c`` to the HSV value channel. Hue and saturation fixed, RGB is
    proportional to the value (max of R, G, B): so scale each pixel by the new value over the
    old (black pixels, of no hue, become grey)."""
    x = x / 255.
    value = x.max(axis=-1, keepdims=True)
    brighter = np.clip(value + c, 0, 1)
    scaled = np.divide(x * brighter, value, out=np.broadcast_to(brighter, x.shape).copy(), where=value > 0)
    return np.clip(scaled, 0, 1) * 255


def contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """A random affine map of three points around the centre (jitter c[2]), then a smooth random
    displacement field (uniform noise blurred by sigma c[1], times alpha c[0])."""
    alpha, sigma, jitter = c
    image = (x / 255.).astype(np.float32)
    h, w = image.shape[:2]
    # The scripts build the points from (height, width) and give them to OpenCV as (x, y).
    centre = np.float32((h, w)) // 2
    side = min(h, w) // 3
    source = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    target = source + rng.uniform(-jitter, jitter, size=source.shape).astype(np.float32)
    image = warp_affine(image.astype(np.float64), affine_from_points(source, target))
    dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    dy = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    coordinates = [rows + dy, cols + dx]
    warped = [ndimage.map_coordinates(image[..., k], coordinates, order=1, mode="reflect") for k in range(3)]
    return np.clip(np.stack(warped, axis=-1), 0, 1) * 255


def pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = x.shape[:2]
    image = Image.fromarray(np.uint8(x))
    image = image.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(image, dtype=np.float64)


def jpeg_compression(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.uint8(x)).save(buffer, "JPEG", quality=c)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


_FUNCTIONS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def check_corruption(name: str, severity: int, constants: str) -> None:
    if name not in (*CORRUPTIONS, IDENTITY):
        raise choice_error("corruption", name, [*CORRUPTIONS, IDENTITY])
    if severity not in SEVERITIES:
        raise PipelineError(f"severity {severity!r}: the corruptions have severities 1 to 5.")
    if constants not in CONSTANT_SETS:
        raise choice_error("constant set", constants, list(CONSTANT_SETS))


def corruption_seed(index: int, name: str, severity: int) -> list[int]:
    """The seed of image ``index``'s corruption: its index, the corruption (a checksum of its
    name, so adding corruptions changes no other's draws) and the severity."""
    return [int(index), zlib.crc32(name.encode()), int(severity)]


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            constants: str | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 corrupted by ``name`` at ``severity`` (1-5) with the
    ``constants`` set (default: by the image's size, ``constants_for``); uint8 (H, W, 3)."""
    constants = constants or constants_for(*image.shape[:2])
    check_corruption(name, severity, constants)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if name == IDENTITY:
        return image.copy()
    c = CONSTANTS[name][constants][severity - 1]
    x = image.astype(np.float64)
    out = frost(x, c, rng, constants) if name == "frost" else _FUNCTIONS[name](x, c, rng)
    return np.clip(out, 0, 255).astype(np.uint8)  # truncated, as the scripts' np.uint8


def corrupt_image(image: np.ndarray, index: int, name: str, severity: int, constants: str) -> np.ndarray:
    """``corrupt`` with the generator of image ``index`` (``corruption_seed``): the same output
    in every run."""
    return corrupt(image, name, severity, np.random.default_rng(corruption_seed(index, name, severity)), constants)


class CorruptedImages(Sequence):
    """The images of a split, each corrupted when read (in the DataLoader workers that read it):
    item i is ``images[i]`` (uint8 (C, H, W), gray or RGB(A)) as an RGB uint8 tensor corrupted
    with image i's seed. Pickles (for spawned workers) as the images and three names."""

    def __init__(self, images: Sequence, name: str, severity: int, constants: str) -> None:
        check_corruption(name, severity, constants)
        self.images, self.name, self.severity, self.constants = images, name, severity, constants

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        import torch

        image = self.images[index]
        if image.shape[0] == 1:  # gray: corrupted as RGB, as the backbones see it
            image = image.expand(3, *image.shape[1:])
        array = image[:3].permute(1, 2, 0).numpy()
        out = corrupt_image(np.ascontiguousarray(array), index, self.name, self.severity, self.constants)
        return torch.from_numpy(out).permute(2, 0, 1).contiguous()


# --- corrupted test splits ----------------------------------------------------------------------

@dataclass(frozen=True)
class ShiftedSplit:
    """A corrupted copy of (some of) the test split: its name in the store, the test rows it
    holds, its images (``images[row]`` is test row ``row`` corrupted) and its description."""

    name: str
    rows: np.ndarray
    images: Sequence
    description: dict


def split_name(corruption: str, severity: int) -> str:
    return f"test@{corruption}@{severity}"


@dataclass(frozen=True)
class CorruptionPlan:
    """Which corrupted test splits an extraction writes: every corruption in ``names`` at every
    severity, of all test images or of ``per_class`` drawn per class (the same rows for every
    corruption, drawn with ``rows_seed``), with the ``constants`` set (auto: by image size)."""

    names: tuple[str, ...]
    severities: tuple[int, ...]
    per_class: int | None = None
    constants: str = "auto"
    rows_seed: int = 0

    def __post_init__(self) -> None:
        for name in self.names:
            for severity in self.severities:
                check_corruption(name, severity, "cifar10-c" if self.constants == "auto" else self.constants)
        if "frost" in self.names:
            frost_textures()  # before any work: the photographs are there, or the error says how to get them

    def splits(self, test) -> list[ShiftedSplit]:
        """The splits of ``test`` (an ImageSplit: images and labels)."""
        from pipeline.extract.views import choose_rows

        rows = np.asarray(choose_rows(test.labels, self.per_class, self.rows_seed), dtype=np.int64)
        constants, chosen = self.constants, "given"
        if constants == "auto":
            height, width = test.images[int(rows[0])].shape[-2:]
            constants = constants_for(int(height), int(width))
            chosen = (f"auto: the first test image is {height}x{width} px; CIFAR-10-C's constants up to "
                      f"{SMALL_IMAGE_SIDE} px on the longer side, ImageNet-C's above")
        common = {"of": "test", "constants": constants, "constants_chosen": chosen, "rows": len(rows),
                  "per_class": "all" if self.per_class is None else self.per_class, "rows_seed": self.rows_seed,
                  "definition": "Hendrycks & Dietterich 2019 (ImageNet-C, CIFAR-10-C), pipeline/extract/corruptions.py",
                  "seed": "numpy default_rng([test row, crc32(corruption name), severity])",
                  "applied": "to the decoded test image at its own size, before resizing"}
        return [ShiftedSplit(split_name(name, severity), rows, CorruptedImages(test.images, name, severity, constants),
                             {**common, "corruption": name, "severity": severity,
                              **({"control": True} if name == IDENTITY else {})})
                for name in self.names for severity in self.severities]
