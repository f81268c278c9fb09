"""The anomaly folder as people lay it out, the cases left of issue 31 item 4, through the real
command (``python -m pipeline.extract --dataset anomaly_folder``):

- anomalib's ``Folder`` layout keeps masks in ``mask/`` (or ``masks/``), as MVTec AD keeps them
  in ``ground_truth/``: recognised in any case wherever ground_truth/ is, never a defect type,
  never listed as images, and their masks found (``<name>.png`` or ``<name>_mask.png``);
- a mask folder in train/ (masks of training images mean nothing to a one-class head) is left
  out with a note on stderr, not silently;
- image files and folders beside train/ and test/, which no split reads, are named in a note
  (a README or licence there is not).

Images are tiny (8x8, extracted at 32x32) and few."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

EXTRACT = ["--views", "0", "--image-size", "32", "--map-grid", "2", "--chunk-rows", "16", "--batch-size", "16",
           "--workers", "0", "--device", "cpu", "--engine", "torch"]


def png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def parts(root: Path) -> Path:
    """An anomaly folder: 3 normal training images; 2 normal and 2 per defect type (crack,
    hole) in test."""
    for i in range(3):
        png(root / "train" / "good" / f"{i:03d}.png", i)
    for seed, folder in enumerate(("good", "crack", "hole")):
        for i in range(2):
            png(root / "test" / folder / f"{i:03d}.png", 10 * seed + i + 10)
    return root


def extract(root: Path, out: Path, *options: str):
    from pipeline.extract.command import main

    return CliRunner().invoke(main, ["--dataset", "anomaly_folder", "--data-dir", str(root), "--out", str(out),
                                     "--backbone", "efficientnet_lite0", *EXTRACT, *options])


def cache_of(out: Path):
    from pipeline.store.cache import FeatureCache

    return FeatureCache.open(out)


def notes(result) -> list[str]:
    return [" ".join(line.split()) for line in result.stderr.splitlines() if line.startswith("note: ")]


# --- mask/ and masks/, anomalib's mask folders ----------------------------------------------------

@pytest.mark.parametrize("where, naming", [
    ("mask/crack", "{i:03d}.png"),              # anomalib: beside train/ and test/, the image's own name
    ("Masks/crack", "{i:03d}_mask.png"),       # any case, MVTec's naming
    ("test/masks/crack", "{i:03d}.png"),        # in test/: never the defect type "masks"
    ("test/MASK/crack", "{i:03d}_mask.png"),
    ("test/crack/mask", "{i:03d}.png"),         # in the defect type's folder: never its images
])
def test_mask_and_masks_folders_hold_masks_never_a_defect_type_nor_images(tmp_path, where, naming):
    root = parts(tmp_path / "parts")
    for i in range(2):
        png(root / where / naming.format(i=i), 50 + i)
    out = tmp_path / "c.zarr"
    result = extract(root, out)
    assert result.exit_code == 0, result.output
    cache = cache_of(out)
    assert cache.classes == ["good", "crack", "hole"] and cache.size("test") == 6  # the masks are not images
    assert list(np.bincount(cache.labels("test"))) == [2, 2, 2]
    assert cache.metadata["dataset"]["masks"] == {f"test/crack/{i:03d}.png": f"{where}/{naming.format(i=i)}"
                                                  for i in range(2)}
    assert not notes(result)  # a mask folder beside train/ and test/ is no stray folder


def test_masks_in_ground_truth_and_mask_folders_together(tmp_path):
    """MVTec's ground_truth/ for one defect type, anomalib's mask/ for the other: both found."""
    root = parts(tmp_path / "parts")
    for i in range(2):
        png(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", 60 + i)
        png(root / "mask" / "hole" / f"{i:03d}.png", 70 + i)
    result = extract(root, tmp_path / "c.zarr")
    assert result.exit_code == 0, result.output
    masks = cache_of(tmp_path / "c.zarr").metadata["dataset"]["masks"]
    assert masks == {**{f"test/crack/{i:03d}.png": f"ground_truth/crack/{i:03d}_mask.png" for i in range(2)},
                     **{f"test/hole/{i:03d}.png": f"mask/hole/{i:03d}.png" for i in range(2)}}


def test_images_lying_directly_in_a_mask_folder_are_named_never_silently_dropped(tmp_path):
    """A folder named mask/ in test/ is a mask folder, never a defect type: images lying directly
    in it (a defect type of that name, or masks without their defect type's folder) match no
    test image, and a note says so."""
    root = parts(tmp_path / "parts")
    for i in range(2):
        png(root / "test" / "Mask" / f"{i:03d}.png", 40 + i)
    out = tmp_path / "c.zarr"
    result = extract(root, out)
    assert result.exit_code == 0, result.output
    assert cache_of(out).classes == ["good", "crack", "hole"]
    [note] = notes(result)
    assert (f"note: test/Mask/ of {root} is read as a mask folder (ground_truth/, mask/ and masks/ are, in any case; "
            f"never a defect type), but 2 image files lie directly in it (000.png; 001.png), the mask of no test "
            f"image: left out.") in note, note
    assert "test/Mask/<defect type>/" in note and "give their folder another name" in note


# --- mask folders in train/ ------------------------------------------------------------------------

def test_a_mask_folder_in_train_is_left_out_with_a_note_naming_it(tmp_path):
    root = parts(tmp_path / "parts")
    png(root / "train" / "ground_truth" / "good" / "000.png", 80)   # beside the normal folder
    png(root / "train" / "good" / "masks" / "000.png", 81)          # inside it
    png(root / "train" / "good" / "sub" / "Mask" / "000.png", 82)   # deeper
    out = tmp_path / "c.zarr"
    result = extract(root, out)
    assert result.exit_code == 0, result.output
    assert cache_of(out).size("train") == 3  # the normal images, no mask
    [note] = [n for n in notes(result) if "train/" in n]
    assert (f"note: {root} has 3 mask folders in train/, left out: train/ground_truth/; train/good/masks/; and 1 "
            f"deeper in train/.") in note, note
    assert "one class" in note and "never used" in note and "ground_truth/<defect type>/" in note
    # Without one, no note.
    plain = extract(parts(tmp_path / "plain"), tmp_path / "p.zarr")
    assert plain.exit_code == 0 and not notes(plain), plain.output


# --- what lies beside train/ and test/ ---------------------------------------------------------------

def test_images_and_folders_beside_train_and_test_are_named_in_a_note(tmp_path):
    root = parts(tmp_path / "parts")
    png(root / "stray.png", 90)
    png(root / "Preview.JPG", 91)
    png(root / "validation" / "good" / "000.png", 92)  # MVTec LOCO's validation split: read by no split here
    (root / "readme.txt").write_text("the dataset's readme")
    (root / "LICENSE").write_text("a licence")
    (root / ".DS_Store").write_text("")
    png(root / "ground_truth" / "crack" / "000_mask.png", 93)  # a mask folder: read, not named
    out = tmp_path / "c.zarr"
    result = extract(root, out)
    assert result.exit_code == 0, result.output
    cache = cache_of(out)
    assert cache.size("train") == 3 and cache.size("test") == 6
    [note] = notes(result)
    assert (f"note: {root} holds, beside train/ and test/, 2 image files (Preview.JPG; stray.png) and the folder "
            f"validation/, which no split reads: left out.") in note, note
    named = note.split("which no split reads")[0]
    assert all(word not in named for word in ("readme", "LICENSE", "DS_Store", "ground_truth")), note
    # A README and a licence alone: no note (a dataset's root is where they belong).
    for path in (root / "stray.png", root / "Preview.JPG"):
        path.unlink()
    (root / "validation" / "good" / "000.png").unlink()
    (root / "validation" / "good").rmdir()
    (root / "validation").rmdir()
    result = extract(root, out)
    assert result.exit_code == 0 and not notes(result), result.output
