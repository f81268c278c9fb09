"""Image files decoded as a viewer shows them (``decode_image_file``): EXIF orientation applied,
16-bit and floating-point pixels scaled from their range (never clipped), and a pixel limit
checked from the header, with an error that names it and how to raise it."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.extract.datasets import decode_image_file
from pipeline.store.cache import FeatureCache

REPO = Path(__file__).resolve().parents[1]


def smooth_rgb(height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth picture with no symmetry (JPEG keeps it close; every turn of it differs)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5, y * 7, (x + 2 * y) * 2], -1).astype(np.uint8)


def decoded(path) -> np.ndarray:
    """``decode_image_file`` as an (H, W, 3) array."""
    image = decode_image_file(str(path))
    assert image.dtype.is_floating_point is False and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy()


def shown_by_pil(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` as PIL's ImageOps.exif_transpose shows an image with that EXIF orientation."""
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def sixteen_bit_gradient(height: int = 16, width: int = 256) -> np.ndarray:
    """Every 16-bit level from 0 to 65535 across, in 4096 steps: uint16 (H, W)."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return np.repeat(row[None], height, 0)


def to_8_bit(values: np.ndarray) -> np.ndarray:
    """16-bit values as 8-bit ones: round(value x 255 / 65535)."""
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG (PIL writes 16-bit grayscale only): (H, W) or (H, W, C), C of 1 to 4."""
    array = np.asarray(array, np.uint16)
    array = array[..., None] if array.ndim == 2 else array
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def write_tiff_rgb16(path: Path, array: np.ndarray) -> Path:
    """An uncompressed 16-bit RGB TIFF (48 bits a pixel), as industrial cameras write."""
    height, width, _ = array.shape
    data = np.asarray(array, "<u2").tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, "bits"), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, "data"), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    where = {"bits": bits_at, "data": bits_at + 6}
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = where.get(value, value)
        ifd += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16)
                     + data)
    return path


# --- EXIF orientation -------------------------------------------------------------------------


# The stored pixels of an image that shows as ``a`` under each orientation (the inverse turn).
STORED_AS = {3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_jpeg_decodes_as_the_upright_image(tmp_path, orientation):
    """A phone's portrait photo: pixels stored sideways, an EXIF tag saying how to turn them."""
    upright = smooth_rgb()
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    stored = np.ascontiguousarray(STORED_AS[orientation](upright))
    Image.fromarray(stored).save(tmp_path / "tagged.jpg", quality=95, exif=exif(orientation))
    reference, tagged = decoded(tmp_path / "upright.jpg"), decoded(tmp_path / "tagged.jpg")
    assert tagged.shape == reference.shape == (32, 48, 3)
    assert np.abs(tagged.astype(int) - reference).mean() < 2  # JPEG's loss only
    assert np.abs(tagged.astype(int) - upright).mean() < 2


@pytest.mark.parametrize("suffix, kinds", [
    (".png", [("RGB", {})]),
    (".webp", [("RGB", {"lossless": True})]),  # torchvision decodes it and ignores its EXIF: turned here
    # PIL decodes TIFFs, and (named by path) garbles an uncompressed one tagged 5 to 8.
    (".tif", [("L", {}), ("RGB", {"compression": "tiff_lzw"})]),
])
def test_every_exif_orientation_is_applied_as_pil_shows_it(tmp_path, suffix, kinds):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    for mode, options in kinds:
        array = np.asarray(Image.fromarray(rgb).convert(mode))
        for orientation in range(1, 9):
            path = tmp_path / f"{mode}{orientation}{suffix}"
            Image.fromarray(array).save(path, exif=exif(orientation), **options)
            np.testing.assert_array_equal(decoded(path), shown_by_pil(array, orientation),
                                          err_msg=f"{mode}, orientation {orientation}")


# --- 16-bit and floating-point pixels -----------------------------------------------------------


def test_16_bit_pngs_and_tiffs_scale_from_their_full_range_not_clipped_to_white(tmp_path):
    gradient = sixteen_bit_gradient()
    expected = to_8_bit(gradient)
    assert len(np.unique(expected)) == 256
    rgb = np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 40000)], -1)
    cases = {
        "gray": (gradient, np.stack([expected] * 3, -1)),
        "gray_alpha": (np.stack([gradient, np.full_like(gradient, 65535)], -1), np.stack([expected] * 3, -1)),
        "rgb": (rgb, to_8_bit(rgb)),
        "rgba": (np.concatenate([rgb, np.full_like(gradient, 1000)[..., None]], -1), to_8_bit(rgb)),  # alpha dropped
    }
    for name, (values, want) in cases.items():
        got = decoded(write_png16(tmp_path / f"{name}.png", values))
        np.testing.assert_array_equal(got, want, err_msg=name)  # every value, not only the saturated ones
    written_by_pil = tmp_path / "pil.png"
    Image.fromarray(gradient).save(written_by_pil)  # PIL's "I;16"
    np.testing.assert_array_equal(decoded(written_by_pil), np.stack([expected] * 3, -1))

    # TIFFs, which PIL decodes: their 16-bit values were clipped to white.
    expected = np.stack([expected] * 3, -1)
    Image.fromarray(gradient).save(tmp_path / "gray.tif")  # PIL "I;16": an industrial camera's mono TIFF
    Image.fromarray(gradient).save(tmp_path / "gray_lzw.tif", compression="tiff_lzw")
    for name in ("gray.tif", "gray_lzw.tif"):
        got = decoded(tmp_path / name)
        assert (got == 255).mean() < 0.01, f"{name}: saturated to white"
        np.testing.assert_array_equal(got, expected, err_msg=name)
    big_endian = tmp_path / "big_endian.tif"
    Image.frombytes("I;16B", gradient.shape[::-1], gradient.astype(">u2").tobytes()).save(big_endian)
    np.testing.assert_array_equal(decoded(big_endian), expected)
    rgb = np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 30000)], -1)
    got = decoded(write_tiff_rgb16(tmp_path / "rgb48.tif", rgb))  # PIL keeps the high byte of each
    assert np.abs(got.astype(int) - to_8_bit(rgb)).max() <= 1


def test_floating_point_tiffs_are_scaled_not_clipped(tmp_path):
    unit = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(8, 0)
    Image.fromarray(unit).save(tmp_path / "unit.tif")  # PIL "F"
    np.testing.assert_array_equal(decoded(tmp_path / "unit.tif")[..., 0], np.round(unit * 255).astype(np.uint8))

    # Beyond [0, 1] (a depth map, a raw sensor value): from the image's own minimum to its maximum.
    wide = np.linspace(-20, 500, 256, dtype=np.float32)[None].repeat(8, 0)
    wide[0, :3] = [np.nan, np.inf, -np.inf]
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    got = decoded(tmp_path / "wide.tif")[..., 0]
    np.testing.assert_array_equal(got[1], np.round((wide[1] + 20) / 520 * 255).astype(np.uint8))
    assert list(got[0, :3]) == [0, 255, 0]  # NaN black, infinities at the ends
    assert got.min() == 0 and got.max() == 255 and (np.diff(got[1].astype(int)) >= 0).all()


def test_a_decompression_bomb_warning_or_error_of_pil_never_surfaces(tmp_path, monkeypatch):
    """The pixel limit here replaces PIL's guard, which would warn (or raise) far below it."""
    monkeypatch.delenv("FFAD_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above 100 pixels, raises above 200
    array = smooth_rgb(30, 40)
    for suffix in (".bmp", ".tif", ".gif", ".png", ".jpg", ".webp"):
        Image.fromarray(array).save(tmp_path / f"image{suffix}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            assert decoded(tmp_path / f"image{suffix}").shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


# --- the pixel limit ------------------------------------------------------------------------


def huge_header(path: Path, width: int = 16000, height: int = 16000) -> Path:
    """A small file whose header claims ``width`` x ``height`` pixels (its data is far too short)."""
    Image.fromarray(smooth_rgb(16, 16)).save(path)
    data = bytearray(path.read_bytes())
    if path.suffix == ".png":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:  # JPEG: the frame header after the SOF0 marker
        at = data.index(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_16000_by_16000_image_is_refused_from_its_header_by_default(tmp_path, monkeypatch, suffix):
    monkeypatch.delenv("FFAD_MAX_IMAGE_PIXELS", raising=False)
    huge_header(tmp_path / f"huge{suffix}")
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(tmp_path / f"huge{suffix}") as pil:
            assert pil.size == (16000, 16000)
    with pytest.raises(Exception) as info:
        decode_image_file(str(tmp_path / f"huge{suffix}"))
    message = str(info.value)
    assert "16000x16000 = 256000000 pixels, over the limit of 100000000" in message
    assert "FFAD_MAX_IMAGE_PIXELS=256000000 or more" in message


def test_a_bad_pixel_limit_setting_is_a_clear_error(tmp_path, monkeypatch):
    from pipeline.errors import PipelineError
    from pipeline.extract.datasets import FileImages

    monkeypatch.setenv("FFAD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(PipelineError, match="FFAD_MAX_IMAGE_PIXELS='lots'.*whole number.*0 for no limit"):
        FileImages([str(tmp_path / "any.png")])


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(root / split / c / f"{i}.png")
    return root


def extract(root: Path, out: Path, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.extract`` on the image folder ``root``, as a user runs it."""
    command = [sys.executable, "-m", "pipeline.extract", "--dataset", "imagefolder", "--data-dir", str(root),
               "--image-size", "32", "--out", str(out), "--device", "cpu", "--views", "0", "--maps", "none",
               "--chunk-rows", "4", "--batch-size", "4", *options]
    environment = {k: v for k, v in os.environ.items() if k != "FFAD_MAX_IMAGE_PIXELS"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**environment, "PIPELINE_PROGRESS": "0", **(env or {})})


def test_an_image_over_the_pixel_limit_is_refused_by_extract_and_skipped_with_skip_bad(tmp_path):
    root = image_folder(tmp_path / "images")  # 24 x 24 = 576 pixels each
    Image.fromarray(smooth_rgb(30, 40)).save(root / "train" / "a" / "big.png")  # 1200 pixels
    limit = {"FFAD_MAX_IMAGE_PIXELS": "1000"}

    refused = extract(root, tmp_path / "refused.zarr", "--workers", "2", env=limit)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    error = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1
    assert ("cannot read the image file train/a/big.png (ImageTooLargeError: 40x30 = 1200 pixels, over the limit "
            "of 1000; to decode it set FFAD_MAX_IMAGE_PIXELS=1200 or more (0: no limit))") in error[0]
    assert "--skip-bad" in error[0]

    skipped = extract(root, tmp_path / "skipped.zarr", "--workers", "2", "--skip-bad", env=limit)
    assert skipped.returncode == 0, skipped.stderr
    meta = FeatureCache.open(tmp_path / "skipped.zarr").metadata
    assert meta["dataset"]["n_train"] == 6
    assert meta["dataset"]["skipped_files"] == [
        ("train: train/a/big.png (ImageTooLargeError: 40x30 = 1200 pixels, over the limit of 1000; to decode it "
         "set FFAD_MAX_IMAGE_PIXELS=1200 or more (0: no limit))")]

    raised = extract(root, tmp_path / "raised.zarr", "--workers", "0", env={"FFAD_MAX_IMAGE_PIXELS": "1200"})
    assert raised.returncode == 0, raised.stderr
    assert FeatureCache.open(tmp_path / "raised.zarr").metadata["dataset"]["n_train"] == 7


def test_rescaled_images_are_noted_once_per_run_not_per_image_or_worker(tmp_path):
    root = tmp_path / "images"
    gradient = sixteen_bit_gradient(24, 24)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                write_png16(root / split / c / f"{i}.png", np.roll(gradient, i, 1))
                Image.fromarray(np.roll(gradient, i, 0)).save(root / split / c / f"{i}.tif")
    Image.fromarray(np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)).save(root / "train/a/unit.tif")
    Image.fromarray(np.linspace(-1, 9, 24 * 24, dtype=np.float32).reshape(24, 24)).save(root / "test/b/wide.tif")

    result = extract(root, tmp_path / "c.zarr", "--workers", "2", "--skip-bad")  # two decodes of each file
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 3, result.stderr
    assert sum("16-bit images are scaled to 8 bits from their full range (value x 255 / 65535" in n for n in notes) == 1
    assert sum("within [0, 1] are scaled to 8 bits as value x 255" in n and "unit.tif" in n for n in notes) == 1
    assert sum("own minimum (black) to its maximum (white)" in n and "wide.tif" in n for n in notes) == 1


def test_a_png_shorter_than_its_header_says_is_an_error_not_a_crash(tmp_path):
    """libpng through torchvision ends the process (no message) on such a file; decoded by
    PIL it is an error, which extraction reports like any unreadable image."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    path = tmp_path / "short.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] + raw[-12:])  # the data cut in half, the end chunk kept
    code = f"from pipeline.extract.datasets import decode_image_file\ndecode_image_file({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-500:])
    assert "truncated" in result.stderr
