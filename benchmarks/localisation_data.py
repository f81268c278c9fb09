"""Make a small, offline, seeded localisation benchmark: crops of real texture photographs with
synthetic defects and their exact masks, one anomaly folder (the MVTec AD / anomalib layout)
per texture.

    python benchmarks/localisation_data.py --out data/textures

The photographs are scikit-image's texture images (``skimage.data.brick()``, ``grass()``,
``gravel()``: 512x512 greyscale photographs from CC0Textures, shipped inside the
scikit-image wheel, so nothing is downloaded; ``pip install -e .[bench]``). Each texture is
one category::

    OUT/<texture>/train/good/000.png ...                   defect-free crops (--train, 60)
    OUT/<texture>/test/good/000.png ...                    defect-free crops (--test-good, 20)
    OUT/<texture>/test/<kind>_<size>/000.png ...           one defect each (--per-defect, 10)
    OUT/<texture>/ground_truth/<kind>_<size>/000_mask.png  its mask: 0/255, one channel
    OUT/<texture>/README.txt                               what this is (synthetic defects), seed, counts
    OUT/<texture>/manifest.json                            every image: crop, defect, area fraction
    OUT/manifest.json                                      the settings and the counts

Train and test never share a pixel, and come from the same parts of the photograph: it is cut
into four quadrants, training crops lie wholly in the top-left or bottom-right one, test crops
wholly in the top-right or bottom-left one (crops of one split may overlap one another). A
split by halves would give train and test different content: the grass photograph has clover
in its top half and blades in its bottom half, the brick photograph's courses slant one way on
the left and the other on the right (the first version split by top and bottom halves, and
every head, image- or patch-level, scored normal grass test images as anomalous as the
defects: near chance). The images are RGB PNGs (the photographs are greyscale, so a normal image has
R = G = B; only the ``stain`` defect has colour).

Defect kinds (``--kinds``), each in every size (``--sizes``):

- ``foreign``: as DRAEM (Zavrtanik et al. 2021): a crop of another photograph (the other
  textures and a few of scikit-image's photographs, in grey, turned, flipped and changed in
  brightness and contrast) blended over the crop, weight 1 - beta with beta in [0.1, 0.6],
  inside a mask shaped by Perlin noise;
- ``scratch``: a thin bent line, much brighter or darker than the texture;
- ``spot``: a small round dark or bright blob;
- ``stain``: a smooth translucent colour blotch in a noise-shaped mask;
- ``cutpaste``: as CutPaste (Li et al. 2021): a rectangle of the same crop pasted elsewhere
  in it, at random turned by up to 45 degrees, brightness and contrast within 10%; or, as
  CutPaste-scar, a thin turned strip.

Sizes are fractions of the image area: ``small`` 0.3-0.8%, ``medium`` 1-3%, ``large`` 5-10%
(``--sizes small,medium,large``; ``NAME=LO:HI`` gives another range). Each defect's area is
drawn in its range and its mask has exactly that many pixels; a draw that cannot place it
(a scratch that leaves the image, a patch that does not fit) is redrawn with the next seed of
its sequence. The mask is exactly the pixels changed: every mask pixel differs from the
defect-free crop by at least MIN_CHANGE (10) grey levels in some channel (a pixel the defect
would change by less is moved to exactly 10 levels from the crop, in the direction of the
defect's mean change; the manifest counts them, ``shifted_pixels``),
and every other pixel is identical to the crop; the generator checks both for every image.

Deterministic: the same --seed and options give byte-identical files (with the same
scikit-image photographs, NumPy and Pillow). Each image's random numbers come from the seed
and its own name (texture, kind, size, index), so leaving out a texture or a kind does not
change the other images. Each file is written under a temporary name and renamed; the whole
output is built in a hidden folder beside OUT and renamed to OUT when complete. An existing
OUT (other than an empty folder) is refused, never added to: one OUT always holds one seed.

Image counts with the defaults: per texture 60 train + 20 normal test + 5 kinds x 3 sizes x
10 = 150 defect test images (230 images; 690 for the three textures).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import click
import numpy as np
from PIL import Image

TEXTURES = ("brick", "grass", "gravel")
# The photographs the ``foreign`` defect takes its patches from (in grey), all shipped inside
# the scikit-image wheel; a texture's own photograph is left out of its pool.
FOREIGN_PHOTOGRAPHS = ("brick", "grass", "gravel", "camera", "coffee", "chelsea", "astronaut", "rocket",
                       "immunohistochemistry", "moon")
KINDS = ("foreign", "scratch", "spot", "stain", "cutpaste")
SIZES = {"small": (0.003, 0.008), "medium": (0.01, 0.03), "large": (0.05, 0.10)}
MIN_CHANGE = 10  # grey levels (of 255) by which every mask pixel differs from the defect-free crop
MAX_ATTEMPTS = 100  # draws per defect image before giving up
STAIN_COLOURS = ((120, 80, 40), (150, 120, 60), (90, 100, 55), (60, 62, 85), (170, 150, 110), (115, 55, 40))
GENERATOR = "benchmarks/localisation_data.py"
FORMAT = 1


class DataError(click.ClickException):
    """A reason the benchmark cannot be made (printed as ``Error: ...``, exit status 1)."""


# --- random numbers ------------------------------------------------------------------------------

def rng_for(seed: int, *keys) -> np.random.Generator:
    """A generator of its own for one image: the seed and the image's keys (names, indices)
    hashed into a SeedSequence, so each image's draws depend on nothing else."""
    words = [int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little") for key in keys]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(shape: tuple[int, int], period: float, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise: random unit gradients on a lattice ``period`` pixels apart
    (at a random offset), each pixel the smoothly (6t^5 - 15t^4 + 10t^3) interpolated dot
    products of the four corners' gradients with the offsets to it. Values about [-1, 1]."""
    height, width = shape
    y = np.arange(height) / period + rng.uniform(0, 1)
    x = np.arange(width) / period + rng.uniform(0, 1)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    angles = rng.uniform(0, 2 * np.pi, (int(y0[-1]) + 2, int(x0[-1]) + 2))
    gy, gx = np.sin(angles), np.cos(angles)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    Y, X = y0[:, None], x0[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[Y + dy, X + dx] * (fy - dy) + gx[Y + dy, X + dx] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2)


def fractal_perlin(shape: tuple[int, int], period: float, rng: np.random.Generator, octaves: int = 3) -> np.ndarray:
    """Octaves of ``perlin``, each half the period and half the amplitude of the last."""
    total = np.zeros(shape)
    for octave in range(octaves):
        total += perlin(shape, max(period / 2 ** octave, 2.0), rng) / 2 ** octave
    return total / (2 - 2 ** (1 - octaves))


def top_pixels(score: np.ndarray, count: int) -> np.ndarray:
    """The mask of the ``count`` pixels of highest score (ties by position): exactly ``count``."""
    order = np.argsort(-score, axis=None, kind="stable")[:count]
    mask = np.zeros(score.size, bool)
    mask[order] = True
    return mask.reshape(score.shape)


# --- photographs -----------------------------------------------------------------------------------

@functools.cache
def photograph(name: str) -> np.ndarray:
    """scikit-image's photograph ``name`` in grey (uint8, H x W), from the files inside its
    package (``skimage.data``; the ones used here need no download)."""
    try:
        from skimage import data
    except ImportError as error:
        raise DataError("scikit-image is needed for its texture photographs: pip install -e .[bench] "
                        "(or pip install scikit-image).") from error
    try:
        image = np.asarray(getattr(data, name)())
    except Exception as error:  # an image that scikit-image would have to download
        raise DataError(f"scikit-image's photograph {name} cannot be read here ({error}).") from error
    if image.ndim == 3:  # ITU-R BT.601 luma, rounded
        image = np.rint(image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    return np.clip(image, 0, 255).astype(np.uint8)


def pixels_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return image[top:top + size, left:left + size]


def to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


Region = tuple[int, int, int, int]  # (top, bottom, left, right) of the photograph, ends excluded


def split_regions(shape: tuple[int, int]) -> dict[str, list[Region]]:
    """The quadrants each split's crops lie in: train the top-left and bottom-right ones, test
    the top-right and bottom-left ones (the module's docstring says why)."""
    rows, columns = shape[0] // 2, shape[1] // 2
    top_left, bottom_right = (0, rows, 0, columns), (rows, shape[0], columns, shape[1])
    top_right, bottom_left = (0, rows, columns, shape[1]), (rows, shape[0], 0, columns)
    return {"train": [top_left, bottom_right], "test": [top_right, bottom_left]}


def crop_position(rng: np.random.Generator, regions: list[Region], size: int) -> tuple[int, int]:
    """A crop's top-left corner, wholly inside one of ``regions`` (drawn first)."""
    top, bottom, left, right = regions[int(rng.integers(len(regions)))]
    return int(rng.integers(top, bottom - size + 1)), int(rng.integers(left, right - size + 1))


# --- defect shapes ---------------------------------------------------------------------------------

def blob(rng: np.random.Generator, size: int, count: int, roughness: float, aspect: tuple[float, float],
         period_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A mask of exactly ``count`` pixels: a rotated ellipse of about that area, at a random
    place, whose edge Perlin noise pushes in and out (``roughness``: how far, in units of the
    radius). Returns the mask and its depth (0 at the edge, 1 at the deepest pixel)."""
    radius = math.sqrt(count / math.pi)
    ratio = rng.uniform(*aspect)
    ry, rx = radius * math.sqrt(ratio), radius / math.sqrt(ratio)
    margin = min(max(ry, rx) * 1.1, size / 2)
    cy, cx = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    distance = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    noise = fractal_perlin((size, size), max(radius * period_scale, 3.0), rng)
    score = -distance + roughness * noise
    mask = top_pixels(score, count)
    edge, deepest = score[mask].min(), score[mask].max()
    depth = np.where(mask, (score - edge) / max(deepest - edge, 1e-9), 0.0)
    return mask, depth


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def _blend(base: np.ndarray, target, alpha: np.ndarray) -> np.ndarray:
    """``base`` (H x W x 3 float) moved toward ``target`` by ``alpha`` (H x W)."""
    return base * (1 - alpha[..., None]) + np.asarray(target, np.float64) * alpha[..., None]


def defect_foreign(rng, image, count, texture):
    size = image.shape[0]
    mask, _ = blob(rng, size, count, roughness=rng.uniform(0.6, 1.2), aspect=(1.0, 2.5),
                   period_scale=rng.uniform(0.6, 1.5))
    pool = [name for name in FOREIGN_PHOTOGRAPHS if name != texture]
    source = pool[int(rng.integers(len(pool)))]
    photo = photograph(source)
    top, left = int(rng.integers(0, photo.shape[0] - size + 1)), int(rng.integers(0, photo.shape[1] - size + 1))
    patch = crop(photo, top, left, size).astype(np.float64)
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    patch = np.rot90(patch, turns)
    if flip:
        patch = patch[:, ::-1]
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
    patch = np.clip((patch - patch.mean()) * contrast + patch.mean() + brightness, 0, 255)
    beta = rng.uniform(0.1, 0.6)
    alpha = np.where(mask, 1 - beta, 0.0)
    new = _blend(image.astype(np.float64), to_rgb(patch), alpha)
    return mask, new, {"source": source, "source_box": [top, left, size], "turns": turns, "flip": flip,
                       "contrast": round(contrast, 4), "brightness": round(brightness, 2), "beta": round(beta, 4)}


def polyline(rng, start, heading, length, bend):
    """Points 0.5 px apart along a curve whose heading swings smoothly by up to ``bend``."""
    steps = max(int(length * 2), 2)
    s = np.arange(steps + 1) * 0.5
    wavelength = rng.uniform(0.5, 2.0) * max(length, 1.0)
    phase = rng.uniform(0, 2 * np.pi)
    theta = heading + bend * np.sin(2 * np.pi * s / wavelength + phase)
    points = np.cumsum(np.stack([np.sin(theta), np.cos(theta)], 1) * 0.5, axis=0) + np.asarray(start)
    return np.vstack([start, points[:-1]]), s


def defect_scratch(rng, image, count, texture):
    size = image.shape[0]
    ratio = rng.uniform(8, 30)  # length over width
    ratio = min(ratio, (1.1 * size) ** 2 / count, count / 1.5 ** 2)
    width = math.sqrt(count / ratio)
    length = math.sqrt(count * ratio)
    heading = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform(0.25 * size, 0.75 * size, 2)
    start = centre - 0.5 * length * np.array([math.sin(heading), math.cos(heading)])
    points, s = polyline(rng, start, heading, 1.5 * length, rng.uniform(0, 0.6))
    best = np.full((size, size), np.inf)  # each pixel's distance to the nearest point of the curve
    along = np.zeros((size, size))  # and that point's place along the curve
    reach = math.ceil(width / 2) + 1
    for (py, px), place in zip(points, s):
        top, left = max(math.floor(py) - reach, 0), max(math.floor(px) - reach, 0)
        bottom, right = min(math.floor(py) + reach + 2, size), min(math.floor(px) + reach + 2, size)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.ogrid[top:bottom, left:right]
        d = np.sqrt((yy - py) ** 2 + (xx - px) ** 2)
        window, closer = best[top:bottom, left:right], d < best[top:bottom, left:right]
        window[closer] = d[closer]
        along[top:bottom, left:right][closer] = place
    inside = best <= width / 2
    if inside.sum() < count:
        return None  # the curve left the image: draw again
    mask = top_pixels(np.where(inside, -along, -np.inf), count)
    bright = bool(rng.integers(2))
    target = rng.uniform(225, 255) if bright else rng.uniform(0, 30)
    strength = rng.uniform(0.45, 0.85)
    alpha = np.where(mask, strength * (1 - 0.4 * (best / max(width / 2, 1e-9)) ** 2), 0.0)
    new = _blend(image.astype(np.float64), target, alpha)
    return mask, new, {"width": round(width, 3), "length": round(float(along[mask].max()), 2),
                       "bright": bright, "target": round(target, 2), "strength": round(strength, 4)}


def defect_spot(rng, image, count, texture):
    size = image.shape[0]
    mask, depth = blob(rng, size, count, roughness=0.15, aspect=(1.0, 1.6), period_scale=1.0)
    bright = bool(rng.integers(2))
    target = rng.uniform(210, 255) if bright else rng.uniform(0, 40)
    strength = rng.uniform(0.6, 0.95)
    alpha = np.where(mask, strength * (0.6 + 0.4 * smoothstep(depth * 2)), 0.0)
    new = _blend(image.astype(np.float64), target, alpha)
    return mask, new, {"bright": bright, "target": round(target, 2), "strength": round(strength, 4)}


def defect_stain(rng, image, count, texture):
    size = image.shape[0]
    mask, depth = blob(rng, size, count, roughness=rng.uniform(0.4, 0.8), aspect=(1.0, 2.5),
                       period_scale=rng.uniform(0.8, 1.6))
    colour = np.clip(np.asarray(STAIN_COLOURS[int(rng.integers(len(STAIN_COLOURS)))]) + rng.uniform(-15, 15, 3),
                     0, 255)
    opacity = rng.uniform(0.3, 0.6)
    alpha = np.where(mask, opacity * (0.35 + 0.65 * smoothstep(depth * 1.5)), 0.0)
    new = _blend(image.astype(np.float64), colour, alpha)
    return mask, new, {"colour": [round(float(c), 1) for c in colour], "opacity": round(opacity, 4)}


def defect_cutpaste(rng, image, count, texture):
    size = image.shape[0]
    scar = bool(rng.integers(2))
    if scar:  # CutPaste-scar: a thin strip, always turned
        ratio = min(rng.uniform(4, 10), (0.9 * size) ** 2 / count)
        angle = rng.uniform(-45, 45)
    else:  # CutPaste: a rectangle, aspect ratio 0.3 to 3.3, turned half the time
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        ratio = min(max(ratio, count / (0.9 * size) ** 2), (0.9 * size) ** 2 / count)
        angle = rng.uniform(-45, 45) if rng.integers(2) else 0.0
    width, height = math.sqrt(count * ratio), math.sqrt(count / ratio)  # x and y extents before turning
    if max(width, height) > size - 2:
        return None
    # The source rectangle, upright; the paste, turned by ``angle`` about its centre.
    sy = int(rng.integers(math.ceil(height / 2), size - math.ceil(height / 2)))
    sx = int(rng.integers(math.ceil(width / 2), size - math.ceil(width / 2)))
    a = math.radians(angle)
    half_y = 0.5 * (abs(width * math.sin(a)) + abs(height * math.cos(a)))
    half_x = 0.5 * (abs(width * math.cos(a)) + abs(height * math.sin(a)))
    if 2 * max(half_y, half_x) > size - 2:
        return None
    dy = int(rng.integers(math.ceil(half_y), size - math.ceil(half_y)))
    dx = int(rng.integers(math.ceil(half_x), size - math.ceil(half_x)))
    if math.hypot(dy - sy, dx - sx) < max(2.0, 0.5 * min(width, height)):
        return None  # pasted (nearly) where it was cut
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xx - dx) * math.cos(a) + (yy - dy) * math.sin(a)  # the paste's own axes
    v = -(xx - dx) * math.sin(a) + (yy - dy) * math.cos(a)
    norm = np.maximum(np.abs(u) / (width / 2), np.abs(v) / (height / 2))
    mask = top_pixels(-norm, count)
    src_y, src_x = np.clip(sy + v, 0, size - 1), np.clip(sx + u, 0, size - 1)
    y0, x0 = np.floor(src_y).astype(int), np.floor(src_x).astype(int)
    y1, x1 = np.minimum(y0 + 1, size - 1), np.minimum(x0 + 1, size - 1)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    base = image.astype(np.float64)
    sampled = ((base[y0, x0] * (1 - wx) + base[y0, x1] * wx) * (1 - wy)
               + (base[y1, x0] * (1 - wx) + base[y1, x1] * wx) * wy)
    brightness, contrast = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)
    mean = sampled[mask].mean()
    sampled = (sampled - mean) * contrast + mean * brightness
    new = np.where(mask[..., None], sampled, base)
    return mask, new, {"variant": "scar" if scar else "patch", "source_centre": [sy, sx], "paste_centre": [dy, dx],
                       "angle": round(angle, 3), "width": round(width, 3), "height": round(height, 3),
                       "brightness": round(brightness, 4), "contrast": round(contrast, 4)}


DEFECTS = {"foreign": defect_foreign, "scratch": defect_scratch, "spot": defect_spot, "stain": defect_stain,
           "cutpaste": defect_cutpaste}


def apply_defect(image: np.ndarray, new: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The defect image: ``new`` (float) rounded inside ``mask``, ``image`` exactly outside it,
    and every mask pixel at least MIN_CHANGE grey levels from ``image`` in its most changed
    channel: a pixel changed less is shifted, all channels alike, so that channel is exactly
    MIN_CHANGE away, in the direction of the defect's mean change (the other way where that
    would leave 0-255). One direction for the whole defect, so that the shifted pixels read as
    a slightly brighter or darker part of it, not as salt-and-pepper noise. Returns the image
    and how many pixels were shifted. Checks that the mask is exactly the change."""
    base = image.astype(np.int16)
    out = np.where(mask[..., None], np.clip(np.rint(new), 0, 255).astype(np.int16), base)
    diff = out - base
    weak = mask & (np.abs(diff).max(axis=2) < MIN_CHANGE)
    if weak.any():
        channel = np.abs(diff).argmax(axis=2)[..., None]
        d = np.take_along_axis(diff, channel, 2)[..., 0]
        b = np.take_along_axis(base, channel, 2)[..., 0]
        mean = diff[mask].mean()
        overall = 1 if mean > 0 else -1 if mean < 0 else (1 if base[mask].mean() < 128 else -1)
        sign = np.full(d.shape, overall)
        sign = np.where((b + sign * MIN_CHANGE > 255) | (b + sign * MIN_CHANGE < 0), -sign, sign)
        shift = sign * MIN_CHANGE - d
        out[weak] = np.clip(out[weak] + shift[weak][:, None], 0, 255)
    check_exact(image, out, mask)
    return out.astype(np.uint8), int(weak.sum())


def check_exact(image: np.ndarray, defect: np.ndarray, mask: np.ndarray) -> None:
    change = np.abs(defect.astype(np.int16) - image.astype(np.int16)).max(axis=2)
    if np.any(change[~mask] != 0):
        raise RuntimeError(f"{int((change[~mask] != 0).sum())} pixels outside the mask changed.")
    if np.any(change[mask] < MIN_CHANGE):
        raise RuntimeError(f"{int((change[mask] < MIN_CHANGE).sum())} mask pixels changed by less than {MIN_CHANGE}.")


def make_defect(seed: int, texture: str, kind: str, size_name: str, area_range: tuple[float, float], index: int,
                image_size: int) -> dict:
    """One defect test image: draws (crop place, area, shape, look) until one fits, with the
    seed sequence (seed, texture, kind, size, index, attempt). Returns the images and a record."""
    photo = photograph(texture)
    regions = split_regions(photo.shape)["test"]
    pixels = image_size * image_size
    low, high = math.ceil(area_range[0] * pixels - 1e-9), math.floor(area_range[1] * pixels + 1e-9)
    if low < 1 or low > high:
        raise DataError(f"size {size_name} ({area_range[0]:g} to {area_range[1]:g} of the area) is no whole number "
                        f"of pixels of a {image_size}x{image_size} image: choose a larger --image-size or range.")
    for attempt in range(MAX_ATTEMPTS):
        rng = rng_for(seed, texture, "test", kind, size_name, index, attempt)
        top, left = crop_position(rng, regions, image_size)
        clean = to_rgb(crop(photo, top, left, image_size))
        count = int(rng.integers(low, high + 1))
        made = DEFECTS[kind](rng, clean, count, texture)
        if made is None:
            continue
        mask, new, params = made
        fraction = float(mask.sum()) / pixels
        if mask.sum() != count or not area_range[0] <= fraction <= area_range[1]:
            continue
        defect, shifted = apply_defect(clean, new, mask)
        return {"clean": clean, "image": defect, "mask": mask,
                "record": {"crop": [top, left, image_size], "attempt": attempt, "area_pixels": count,
                           "area_fraction": round(fraction, 6), "shifted_pixels": shifted, "params": params}}
    raise DataError(f"no {kind} defect of size {size_name} fitted a {image_size}x{image_size} image in "
                    f"{MAX_ATTEMPTS} draws (texture {texture}, image {index}).")


# --- writing ---------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary name in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def json_bytes(payload) -> bytes:
    return (json.dumps(payload, indent=1, sort_keys=False) + "\n").encode()


class Settings(NamedTuple):
    """What one run makes (a NamedTuple: the script also loads by path, outside sys.modules)."""
    seed: int
    image_size: int
    train: int
    test_good: int
    per_defect: int
    textures: tuple[str, ...]
    kinds: tuple[str, ...]
    sizes: tuple[tuple[str, tuple[float, float]], ...]

    def describe(self) -> dict:
        return {"seed": self.seed, "image_size": self.image_size, "train": self.train, "test_good": self.test_good,
                "per_defect": self.per_defect, "textures": list(self.textures), "kinds": list(self.kinds),
                "sizes": {name: list(bounds) for name, bounds in self.sizes}, "min_change": MIN_CHANGE}

    def command(self) -> str:
        sizes = ",".join(name if SIZES.get(name) == bounds else f"{name}={bounds[0]:g}:{bounds[1]:g}"
                         for name, bounds in self.sizes)
        return (f"python {GENERATOR} --out OUT --seed {self.seed} --image-size {self.image_size} --train {self.train} "
                f"--test-good {self.test_good} --per-defect {self.per_defect} --textures {','.join(self.textures)} "
                f"--kinds {','.join(self.kinds)} --sizes {sizes}")


def make_texture(folder: Path, texture: str, settings: Settings) -> dict:
    """Write one texture's anomaly folder into ``folder``; returns its image counts."""
    photo = photograph(texture)
    size = settings.image_size
    regions = split_regions(photo.shape)
    images, counts = [], {}
    for split, count in (("train", settings.train), ("test", settings.test_good)):
        for index in range(count):
            top, left = crop_position(rng_for(settings.seed, texture, split, "good", index), regions[split], size)
            name = f"{split}/good/{index:03d}.png"
            write_atomic(folder / name, png_bytes(to_rgb(crop(photo, top, left, size))))
            images.append({"path": name, "split": split, "label": "good", "kind": None, "size": None,
                           "size_range": None, "area_fraction": 0.0, "mask": None, "crop": [top, left, size]})
        counts[f"{split}/good"] = count
    for kind in settings.kinds:
        for size_name, area_range in settings.sizes:
            label = f"{kind}_{size_name}"
            for index in range(settings.per_defect):
                made = make_defect(settings.seed, texture, kind, size_name, area_range, index, size)
                name, mask_name = f"test/{label}/{index:03d}.png", f"ground_truth/{label}/{index:03d}_mask.png"
                write_atomic(folder / name, png_bytes(made["image"]))
                write_atomic(folder / mask_name, png_bytes(made["mask"].astype(np.uint8) * 255))
                images.append({"path": name, "split": "test", "label": label, "kind": kind, "size": size_name,
                               "size_range": list(area_range), **made["record"], "mask": mask_name})
            counts[f"test/{label}"] = settings.per_defect
    source = {"photograph": f"skimage.data.{texture}()", "shape": list(photo.shape), "pixels_sha256": pixels_digest(photo),
              "train_regions": [list(r) for r in regions["train"]], "test_regions": [list(r) for r in regions["test"]]}
    manifest = {"format": FORMAT, "generator": GENERATOR, "synthetic_defects": True, "texture": texture,
                "settings": settings.describe(), "source": source, "versions": versions(), "counts": counts,
                "images": images}
    write_atomic(folder / "manifest.json", json_bytes(manifest))
    write_atomic(folder / "README.txt", readme(texture, settings, source, counts).encode())
    return counts


def versions() -> dict:
    import PIL
    import skimage

    return {"scikit-image": skimage.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


KIND_TEXT = {
    "foreign": "a crop of another photograph (one of {pool}; in grey, turned by a multiple of 90 degrees, "
               "maybe flipped, contrast x0.7-1.3, brightness -30..+30) blended in with weight 1 - beta, beta "
               "0.1-0.6, inside a mask shaped by Perlin noise (DRAEM, Zavrtanik et al. 2021).",
    "scratch": "a thin bent line (length 8-30 times its width), moved 45-85% of the way toward near-white or "
               "near-black, fading a little toward its sides.",
    "spot": "a nearly round blob, dark or bright (moved 60-95% of the way toward near-black or near-white).",
    "stain": "a smooth translucent colour blotch (brown, ochre, olive, slate, sand or rust; opacity 0.3-0.6 at "
             "its deepest, less toward its edge) in a mask shaped by Perlin noise.",
    "cutpaste": "a rectangle of the same image (aspect ratio 0.3-3.3) pasted elsewhere in it, half the time "
                "turned by up to 45 degrees, brightness and contrast within 10% (CutPaste, Li et al. 2021); or "
                "a thin strip (4-10 times as long as wide) turned by up to 45 degrees (CutPaste-scar).",
}


def readme(texture: str, settings: Settings, source: dict, counts: dict) -> str:
    size = settings.image_size
    pool = ", ".join(name for name in FOREIGN_PHOTOGRAPHS if name != texture)
    total = sum(counts.values())
    lines = [
        f"{texture}: a localisation benchmark with SYNTHETIC defects",
        "",
        "THE DEFECTS IN THIS FOLDER ARE SYNTHETIC. They were painted by a program onto crops of one real",
        "photograph; they are not real defects, and scores on them measure how a method finds these",
        "painted changes, not how it finds real ones.",
        "",
        f"Photograph: scikit-image's data.{texture}() ({source['shape'][0]}x{source['shape'][1]} greyscale, from",
        f"CC0Textures; SHA-256 of its pixels {source['pixels_sha256']}).",
        f"Made by {GENERATOR} with seed {settings.seed}:",
        f"  {settings.command()}",
        f"(scikit-image {versions()['scikit-image']}, NumPy {np.__version__}). The same seed and options give the",
        "same files, byte for byte.",
        "",
        f"Images: {size}x{size} RGB PNG crops (the photograph is grey, so R = G = B except in stains).",
        ("Train and test share no pixel: training crops lie wholly in the photograph's top-left or bottom-right"),
        ("quadrant, test crops in its top-right or bottom-left one (regions as (top, bottom, left, right): train "
         f"{source['train_regions']}, test {source['test_regions']}; crops of one split may overlap)."),
        "",
        f"Counts ({total} images):",
        *(f"  {folder}: {count}" for folder, count in counts.items()),
        "",
        "Defect kinds:",
        *(f"  {kind}: {KIND_TEXT[kind].format(pool=pool)}" for kind in settings.kinds),
        "",
        "Sizes (the mask's share of the image area; each defect's pixel count is drawn in the range and",
        "its mask has exactly that many pixels):",
        *(f"  {name}: {low:.2%} to {high:.2%}" for name, (low, high) in settings.sizes),
        "",
        "Masks: ground_truth/<kind>_<size>/<name>_mask.png, one channel, 255 = defect, 0 = not. A mask is",
        f"exactly the pixels changed: each mask pixel differs from the defect-free crop by at least {MIN_CHANGE}",
        f"grey levels in some channel (pixels the defect would change by less are set to exactly {MIN_CHANGE}",
        "levels away, in the direction of the defect's mean change; manifest.json counts them as",
        "shifted_pixels), and every other pixel equals the defect-free crop.",
        "",
        "manifest.json lists every image: its crop of the photograph (top, left, size), and for a defect its",
        "kind, size, size range, actual area fraction, mask and the defect's drawn parameters.",
        "",
    ]
    return "\n".join(lines)


def make_benchmark(out: Path, settings: Settings, echo=lambda line: None) -> dict:
    """Make every texture's folder under ``out``: built in a hidden folder beside it and renamed
    into place when complete. Refuses an ``out`` that exists, unless it is an empty folder."""
    out = Path(out)
    if os.path.lexists(out) and not (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        raise DataError(f"{out} exists already; remove it or choose another --out (a rerun never adds to or "
                        f"mixes with an earlier output).")
    for texture in settings.textures:
        photograph(texture)  # fails before writing anything when one cannot be read
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        summary = {}
        for texture in settings.textures:
            counts = make_texture(building / texture, texture, settings)
            summary[texture] = {"counts": counts, "images": sum(counts.values()),
                                "manifest": f"{texture}/manifest.json"}
            echo(f"{texture}: {sum(counts.values())} images")
        write_atomic(building / "manifest.json", json_bytes({
            "format": FORMAT, "generator": GENERATOR, "synthetic_defects": True, "settings": settings.describe(),
            "versions": versions(), "textures": summary}))
        try:
            os.replace(building, out)
        except OSError as error:
            raise DataError(f"cannot move the finished benchmark to {out} ({error.strerror}); it exists now?") from error
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def parse_names(value: str, known, what: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise click.BadParameter(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
                                 f"{', '.join(known)}.")
    return names


def parse_sizes(value: str) -> tuple[tuple[str, tuple[float, float]], ...]:
    sizes = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, _, bounds = part.partition("=")
        name = name.strip()
        if not bounds:
            if name not in SIZES:
                raise click.BadParameter(f"unknown size {name}; choose from {', '.join(SIZES)} or give NAME=LO:HI.")
            sizes[name] = SIZES[name]
            continue
        try:
            low, high = (float(x) for x in bounds.split(":"))
        except ValueError:
            raise click.BadParameter(f"{part}: a range is NAME=LO:HI, area fractions such as small=0.003:0.008.")
        if not (0 < low <= high < 1) or not name.replace("-", "").replace("_", "").isalnum():
            raise click.BadParameter(f"{part}: need 0 < LO <= HI < 1 and a name of letters, digits, - or _.")
        sizes[name] = (low, high)
    if not sizes:
        raise click.BadParameter("no size given.")
    return tuple(sizes.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=(
    "Defaults: 60 train, 20 normal test and 5 kinds x 3 sizes x 10 defect images per texture, 128x128 "
    "(690 images in all). Then, for one texture: python -m pipeline.extract --dataset anomaly_folder "
    "--data-dir data/textures/brick"))
@click.option("--out", default="data/textures", show_default=True, type=click.Path(file_okay=False),
              help="The folder to make, one anomaly folder per texture in it. Must not exist (or be an empty "
                   "folder): an earlier output is never added to.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seeds every draw; the same seed and options give byte-identical files.")
@click.option("--image-size", default=128, show_default=True, type=click.IntRange(16, 256),
              help="Side of the square crops, in pixels (at most half the photograph's 512 rows).")
@click.option("--train", "train", default=60, show_default=True, type=click.IntRange(1),
              help="Defect-free training crops per texture (train/good).")
@click.option("--test-good", default=20, show_default=True, type=click.IntRange(1),
              help="Defect-free test crops per texture (test/good).")
@click.option("--per-defect", default=10, show_default=True, type=click.IntRange(1),
              help="Defect test images per texture, kind and size (test/<kind>_<size>).")
@click.option("--textures", default=",".join(TEXTURES), show_default=True,
              help="Comma-separated scikit-image texture photographs, one category each.")
@click.option("--kinds", default=",".join(KINDS), show_default=True,
              help="Comma-separated defect kinds: foreign (DRAEM-style foreign texture in a Perlin mask), scratch, "
                   "spot, stain, cutpaste (CutPaste patch or scar).")
@click.option("--sizes", default=",".join(SIZES), show_default=True,
              help="Comma-separated defect sizes as area fractions: small (0.3-0.8%), medium (1-3%), large "
                   "(5-10%), or NAME=LO:HI for another range (tiny=0.001:0.003).")
def main(out, seed, image_size, train, test_good, per_defect, textures, kinds, sizes):
    """Make an offline, seeded localisation benchmark: crops of scikit-image's texture photographs
    (brick, grass, gravel) with synthetic defects (DRAEM-style foreign textures, scratches, spots,
    stains, CutPaste patches) in several sizes and their exact masks, one MVTec AD-style anomaly
    folder per texture, with a README and a manifest. The defects are synthetic."""
    settings = Settings(seed=seed, image_size=image_size, train=train, test_good=test_good, per_defect=per_defect,
                        textures=parse_names(textures, TEXTURES, "texture"),
                        kinds=parse_names(kinds, KINDS, "defect kind"), sizes=parse_sizes(sizes))
    summary = make_benchmark(Path(out), settings, echo=click.echo)
    per_texture = ", ".join(f"{name} {entry['images']}" for name, entry in summary.items())
    click.echo(f"wrote {out}: {sum(entry['images'] for entry in summary.values())} images ({per_texture}); "
               f"the defects are synthetic.")


if __name__ == "__main__":
    main()
