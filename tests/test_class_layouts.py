"""Class names as people actually make them, and folders as people actually lay them out
(issue 31, items 3 and 4), through the real commands:

- one file per class, by construction (``safe_filename``), also for a class named like another's
  file name and for names that differ only in case;
- class names Unicode-normalised (NFC) where they enter (image folders, anomaly folders, HDF5
  imports), two spellings of one name refused;
- the anomaly folder's normal folder matched the way people write it, near misses refused,
  ``ground_truth/`` never a defect type, images lying directly in train/ or test/ reported;
- ``--classes`` choosing any class, ``all`` and names with commas included.

Images are tiny (8x8, extracted at 32x32) and few."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from cli_results import error_line

from pipeline import metrics_file
from pipeline.files import is_kept_name, safe_filename

EXTRACT = ["--views", "0", "--image-size", "32", "--map-grid", "2", "--chunk-rows", "16", "--batch-size", "16",
           "--workers", "0", "--device", "cpu"]
NFD, NFC = "cafe\u0301", "caf\u00e9"


def png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def image_folder(root: Path, train: dict[str, int], test: dict[str, int]) -> Path:
    """``train/<folder>/`` and ``test/<folder>/`` with the given numbers of images."""
    seed = 0
    for split, folders in (("train", train), ("test", test)):
        for folder, count in folders.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                png(root / split / folder / f"{i:03d}.png", seed)
    return root


def parts(root: Path, normal: str = "good", test_normal: str | None = None, defects=("crack", "hole")) -> Path:
    """An anomaly folder: 3 normal training images, 2 normal and 2 per defect type in test."""
    return image_folder(root, {normal: 3}, {test_normal or normal: 2, **{d: 2 for d in defects}})


def extract(dataset: str, root: Path, out: Path, *options: str):
    from pipeline.extract.command import main

    return CliRunner().invoke(main, ["--dataset", dataset, "--data-dir", str(root), "--out", str(out), *EXTRACT,
                                     *options])


def cache_classes(path: Path) -> list[str]:
    from pipeline.store.cache import FeatureCache

    return FeatureCache.open(path).classes


def write_h5(path: Path, classes, dim: int = 4) -> Path:
    rng = np.random.default_rng(0)
    k = len(classes)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 4 * k), ("test", 3 * k)):
            f[f"{split}/features"] = rng.normal(size=(n, dim)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % k
        f.attrs["classes"] = json.dumps(classes, ensure_ascii=False)
    return path


def import_hdf5(tmp_path: Path, classes) -> tuple[object, Path]:
    from pipeline.store.command import main

    out = tmp_path / "c.zarr"
    return CliRunner().invoke(main, ["import-hdf5", str(write_h5(tmp_path / "f.h5", classes)), str(out)]), out


def knn(cache: Path, metrics: Path, *options: str):
    from stages.knn import main

    return CliRunner().invoke(main, ["--cache", str(cache), "--k", "2", "--metrics", str(metrics), *options])


# --- one file per class, by construction --------------------------------------------------------

def tricky_names() -> list[str]:
    names = ["", ".", "..", "...", "a/b", "a\\b", "a b", "a_b", "a-b", "a--b", "a.", ".a", "-a", "good part",
             "good_part", "Good", "good", "GOOD", "gOOd", "con", "CON", "nul.txt", "aux", "com1", "x" * 100,
             "x" * 101, "x" * 300, "y" * 300 + "1", "y" * 300 + "2", "\u00e9", "e\u0301", "\u00c9", "日本", "a\0b",
             " ", "\t", "a b ", " a b", "roc_../../x", "../../x", "a" + "\ud800", "_", "__", "-", "--"]
    rng = random.Random(31)
    alphabet = "aAbB_-. /\\%é日0"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    # Adversarial: names literally equal to other names' file names (in any case), twice over.
    for _ in range(2):
        names += [made.removesuffix(".json") for name in list(names) for made in (safe_filename(name, ".json"),)]
        names += [name.upper() for name in names[:200]] + [name.lower() for name in names[:200]]
    return list(dict.fromkeys(names))


def test_safe_filename_gives_every_name_its_own_file_even_ignoring_case():
    names = tricky_names()
    made = {name: safe_filename(name, ".json") for name in names}
    by_file: dict[str, str] = {}
    for name, file_name in made.items():
        assert file_name.endswith(".json")
        stem = file_name.removesuffix(".json")
        assert stem not in ("", ".", "..") and not stem.startswith((".", "-")) and not stem.endswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem), name
        assert len(file_name) <= 120
        assert stem.split(".")[0].lower() not in ("con", "nul", "aux", "com1")
        # Never two names in one file, also on a case-insensitive file system.
        key = file_name.casefold()
        assert key not in by_file, f"{name!r} and {by_file[key]!r} share {file_name}"
        by_file[key] = name
    # Plain names keep their own name (the files people read, the paths dvc.yaml names).
    for name in ("good", "bottle", "metal_nut", "0", "roc_good", "digits_efficientnet_lite0_224", "a.b", "a-b"):
        assert safe_filename(name, ".json") == f"{name}.json" and is_kept_name(name)
    # A class named like another's file name gets its own.
    assert safe_filename(safe_filename("good part")) != safe_filename("good part")


def test_classes_named_like_each_others_files_or_differing_in_case_each_get_files(tmp_path):
    clash = safe_filename("good part")  # the class literally named like 'good part''s file name
    old_form = "good_part-" + hashlib.sha256(b"good part").hexdigest()[:8]  # its file name before issue 31
    classes = ["good part", clash, old_form, "Good", "good", "GOOD"]
    result, cache = import_hdf5(tmp_path, classes)
    assert result.exit_code == 0, result.output
    plots, heads = tmp_path / "plots", tmp_path / "heads"
    result = knn(cache, tmp_path / "m.json", "--plots", str(plots), "--save-heads", str(heads))
    assert result.exit_code == 0, result.output
    for folder, suffix in ((plots, ".json"), (heads, ".head")):
        files = [p.name for p in folder.iterdir()]
        assert len({name.casefold() for name in files}) == len(classes), files
        assert all(name.endswith(suffix) for name in files)
    assert set(metrics_file.read(tmp_path / "m.json")["per_class"]) == set(classes)


# --- Unicode normalisation where class names enter ---------------------------------------------

def test_an_hdf5_import_keeps_names_nfc_and_refuses_two_spellings_of_one(tmp_path):
    (tmp_path / "one").mkdir()
    result, cache = import_hdf5(tmp_path / "one", [NFD, "tea"])
    assert result.exit_code == 0, result.output
    assert cache_classes(cache) == [NFC, "tea"]
    (tmp_path / "two").mkdir()
    result, cache = import_hdf5(tmp_path / "two", [NFC, "tea", NFD])
    line = error_line(result)
    assert "classes attribute" in line and "NFC" in line and "U+0301" in line
    assert not cache.exists()


def test_an_anomaly_folder_refuses_two_spellings_of_one_defect_type(tmp_path):
    root = parts(tmp_path / "parts", defects=(NFC, NFD))
    line = error_line(extract("anomaly_folder", root, tmp_path / "c.zarr"))
    assert "NFC" in line and str(root / "test") in line
    assert not (tmp_path / "c.zarr").exists()


def test_image_folder_class_names_are_nfc_so_a_decomposed_train_folder_meets_its_test_folder(tmp_path):
    root = image_folder(tmp_path / "imgs", {NFD: 2, "tea": 2}, {NFC: 2, "tea": 2})
    result = extract("imagefolder", root, tmp_path / "c.zarr")
    assert result.exit_code == 0, result.output
    assert cache_classes(tmp_path / "c.zarr") == [NFC, "tea"]
    # Two folders of one split that are one name after normalisation: refused.
    (root / "test" / NFD).mkdir()
    png(root / "test" / NFD / "x.png", 99)
    (root / "train" / NFC).mkdir()
    png(root / "train" / NFC / "x.png", 98)
    line = error_line(extract("imagefolder", root, tmp_path / "d.zarr"))
    assert "NFC" in line and "U+0301" in line


def test_an_anomaly_folder_names_a_decomposed_defect_type_nfc(tmp_path):
    root = parts(tmp_path / "parts", normal="good", defects=(NFD,))
    result = extract("anomaly_folder", root, tmp_path / "c.zarr")
    assert result.exit_code == 0, result.output
    assert cache_classes(tmp_path / "c.zarr") == ["good", NFC]


# --- the anomaly folder as people lay it out ----------------------------------------------------

@pytest.mark.parametrize("train_name, test_name", [("Good", "good"), ("good", " GOOD "), ("GOOD", "Good "),
                                                   (" good", "good")])
def test_the_normal_folder_is_matched_ignoring_case_and_surrounding_spaces(tmp_path, train_name, test_name):
    root = parts(tmp_path / "parts", normal=train_name, test_normal=test_name)
    result = extract("anomaly_folder", root, tmp_path / "c.zarr")
    assert result.exit_code == 0, result.output
    from pipeline.store.cache import FeatureCache

    cache = FeatureCache.open(tmp_path / "c.zarr")
    assert cache.classes == ["good", "crack", "hole"]
    assert cache.metadata["dataset"]["normal_classes"] == ["good"]
    assert list(np.bincount(cache.labels("test"))) == [2, 2, 2] and cache.size("train") == 3
    result = knn(tmp_path / "c.zarr", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert list(metrics_file.read(tmp_path / "m.json")["per_class"]) == ["crack", "hole"]


@pytest.mark.parametrize("beside", ["Good", "GOOD ", " good"])
def test_two_folders_of_the_normal_class_in_one_split_are_refused(tmp_path, beside):
    root = parts(tmp_path / "parts")
    image_folder(root, {}, {beside: 2})
    line = error_line(extract("anomaly_folder", root, tmp_path / "c.zarr"))
    assert "two folders of the normal class good" in line and repr(beside) in line


@pytest.mark.parametrize("split, near", [("test", "good_"), ("test", "goood"), ("test", "Goods"), ("test", "go od"),
                                         ("test", "good-1"), ("train", "goods")])
def test_a_near_miss_of_the_normal_folder_is_refused_never_graded_as_a_defect_type(tmp_path, split, near):
    root = parts(tmp_path / "parts")
    image_folder(root, {near: 2} if split == "train" else {}, {near: 2} if split == "test" else {})
    line = error_line(extract("anomaly_folder", root, tmp_path / "c.zarr"))
    assert repr(near) in line and "close to the normal folder's name 'good'" in line
    assert "graded as a defect type" in line and "--normal" in line
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("where", ["test/ground_truth/crack", "test/Ground_Truth/crack", "test/crack/ground_truth",
                                   "GroundTruth/crack"])
def test_ground_truth_is_a_mask_folder_never_a_defect_type_nor_images(tmp_path, where):
    root = parts(tmp_path / "parts")
    for i in range(2):
        png(root / where / f"{i:03d}_mask.png", 50 + i)
    out = tmp_path / "c.zarr"
    result = extract("anomaly_folder", root, out)
    assert result.exit_code == 0, result.output
    from pipeline.store.cache import FeatureCache

    cache = FeatureCache.open(out)
    assert cache.classes == ["good", "crack", "hole"] and cache.size("test") == 6  # the masks are not images
    assert cache.metadata["dataset"]["masks"] == {f"test/crack/{i:03d}.png": f"{where}/{i:03d}_mask.png"
                                                  for i in range(2)}


@pytest.mark.parametrize("dataset", ["anomaly_folder", "imagefolder"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_images_lying_directly_in_train_or_test_are_reported_not_dropped(tmp_path, dataset, split):
    if dataset == "anomaly_folder":
        root = parts(tmp_path / "parts")
    else:
        root = image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, {"a": 2, "b": 2})
    png(root / split / "stray.png", 77)
    (root / split / "notes.txt").write_text("not an image: left alone")
    result = extract(dataset, root, tmp_path / "c.zarr")
    line = error_line(result)
    assert f"{split}/stray.png" in line and f"directly in {split}/" in line and "--skip-bad" in line
    assert "not an image outside every class folder, left out: notes.txt" in result.stderr
    # --skip-bad leaves it out and records it in the cache.
    result = extract(dataset, root, tmp_path / "c.zarr", "--skip-bad", "--overwrite")
    assert result.exit_code == 0, result.output
    from pipeline.store.cache import FeatureCache

    skipped = FeatureCache.open(tmp_path / "c.zarr").metadata["dataset"]["skipped_files"]
    assert [entry.split(" (")[0] for entry in skipped] == [f"{split}: {split}/stray.png"]


# --- --classes chooses any class -----------------------------------------------------------------

SELECTABLE = ["all", "a,b", "a", "b", "x, y", "ALL", "7"]


SELECTIONS = [  # --classes, the classes chosen
    ("a,b", ["a,b"]),           # a whole name wins over the commas
    ("a,b,b", ["a,b", "b"]),    # the longest name first
    ("b,a", ["b", "a"]),
    ("x, y", ["x, y"]),         # spaces around the comma, as written
    ("x,y", ["x, y"]),          # or trimmed, as the command line trims them
    ("all,", ["all"]),          # the class named all: a list of one
    ("ALL,", ["ALL"]),
    ("all", SELECTABLE),        # the word alone: every class
    ("7", ["7"]),               # a name wins over an index
    ("6,0", ["7", "all"]),
]


def test_classes_selects_any_class_through_the_command(tmp_path):
    result, cache = import_hdf5(tmp_path, SELECTABLE)
    assert result.exit_code == 0, result.output
    for given, chosen in SELECTIONS:
        result = knn(cache, tmp_path / "m.json", "--classes", given)
        assert result.exit_code == 0, (given, result.output)
        assert list(metrics_file.read(tmp_path / "m.json")["per_class"]) == chosen, given


def test_a_class_selection_that_names_no_class_is_refused_with_the_way_to_name_all(tmp_path):
    result, cache = import_hdf5(tmp_path, ["a", "b"])
    assert result.exit_code == 0, result.output
    line = error_line(knn(cache, tmp_path / "m.json", "--classes", "all,"))
    assert "unknown class 'all'" in line and "--classes all," in line
    line = error_line(knn(cache, tmp_path / "m.json", "--classes", "a,c"))
    assert "unknown class 'c'" in line


def test_classes_help_says_how_to_choose_any_class():
    from stages.knn import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--classes all," in text and "a,b" in text
