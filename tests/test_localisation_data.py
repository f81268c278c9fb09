"""benchmarks/localisation_data.py: the seeded texture benchmark with synthetic defects. A tiny
version (64x64 crops, a few images per folder) of every texture, kind and size."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("skimage")

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "64", "--train", "4", "--test-good", "3", "--per-defect", "2"]


def load_script():
    spec = importlib.util.spec_from_file_location("localisation_data", REPO / "benchmarks" / "localisation_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


script = load_script()


def generate(out: Path, *options: str):
    result = CliRunner().invoke(script.main, ["--out", str(out), *TINY, *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "textures"
    generate(out, "--seed", "0")
    return out


def defects(root: Path, texture: str) -> list[dict]:
    manifest = json.loads((root / texture / "manifest.json").read_text())
    return [image for image in manifest["images"] if image["kind"]]


def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs(bench, tmp_path):
    first = files(bench)
    again = tmp_path / "again"
    generate(again, "--seed", "0")
    assert files(again) == first
    other = tmp_path / "other"
    generate(other, "--seed", "1")
    second = files(other)
    assert second.keys() == first.keys()
    images = [name for name in first if name.endswith(".png") and "ground_truth" not in name]
    assert all(first[name] != second[name] for name in images)
    assert not any(".tmp" in name for name in first)
    assert sorted(p.name for p in bench.parent.iterdir()) == ["textures"]  # no building folder left


def test_every_texture_kind_and_size_is_made(bench):
    for texture in script.TEXTURES:
        folders = sorted(p.name for p in (bench / texture / "test").iterdir())
        expected = sorted(["good", *(f"{kind}_{size}" for kind in script.KINDS for size in script.SIZES)])
        assert folders == expected
        assert len(defects(bench, texture)) == len(script.KINDS) * len(script.SIZES) * 2


def test_masks_are_exactly_the_changed_pixels(bench):
    for texture in script.TEXTURES:
        photo = script.photograph(texture)
        for record in defects(bench, texture):
            top, left, size = record["crop"]
            clean = np.repeat(photo[top:top + size, left:left + size, None], 3, axis=2).astype(np.int16)
            image = read(bench / texture / record["path"]).astype(np.int16)
            mask_file = Image.open(bench / texture / record["mask"])
            assert mask_file.mode == "L"
            mask_values = np.asarray(mask_file)
            assert set(np.unique(mask_values)) <= {0, 255}
            mask = mask_values == 255
            change = np.abs(image - clean).max(axis=2)
            assert np.all(change[~mask] == 0), record["path"]  # outside: the defect-free crop, exactly
            assert np.all(change[mask] >= script.MIN_CHANGE), record["path"]  # inside: visibly changed
            assert mask.sum() == record["area_pixels"] > 0


def test_every_mask_area_is_in_its_size_range(bench, tmp_path):
    seen = set()
    for texture in script.TEXTURES:
        for record in defects(bench, texture):
            mask = read(bench / texture / record["mask"]) == 255
            low, high = script.SIZES[record["size"]]
            assert record["size_range"] == [low, high]
            assert low <= mask.mean() <= high, (record["path"], mask.mean())
            assert record["area_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
            seen.add(record["size"])
    assert seen == set(script.SIZES)
    custom = tmp_path / "custom"
    generate(custom, "--textures", "gravel", "--kinds", "scratch,cutpaste", "--sizes", "huge=0.12:0.15,small")
    for record in defects(custom, "gravel"):
        mask = read(custom / "gravel" / record["mask"]) == 255
        low, high = (0.12, 0.15) if record["size"] == "huge" else script.SIZES["small"]
        assert low <= mask.mean() <= high


def test_the_anomaly_folder_loader_reads_each_texture_with_its_masks(bench):
    from pipeline.extract.datasets import load_anomaly_folder

    labels = sorted(f"{kind}_{size}" for kind in script.KINDS for size in script.SIZES)
    for texture in script.TEXTURES:
        root = bench / texture
        dataset = load_anomaly_folder(Path(root), download=False)
        assert dataset.classes == ["good", *labels]
        assert len(dataset.train.labels) == 4 and set(dataset.train.labels.tolist()) == {0}
        counts = np.bincount(dataset.test.labels, minlength=len(dataset.classes))
        assert counts.tolist() == [3] + [2] * len(labels)
        masks = dataset.identity["masks"]
        defect_images = [p for p, label in zip(dataset.test.images.paths, dataset.test.labels) if label != 0]
        expected = {record["path"]: record["mask"] for record in defects(bench, texture)}
        assert masks == expected
        assert sorted(os.path.relpath(p, root) for p in defect_images) == sorted(expected)
        assert all((root / mask).is_file() for mask in masks.values())
        readme = (root / "README.txt").read_text()
        assert "SYNTHETIC" in readme and "--seed 0" in readme and "train/good: 4" in readme
    top = json.loads((bench / "manifest.json").read_text())
    assert top["synthetic_defects"] is True and top["settings"]["seed"] == 0
    assert top["textures"]["brick"]["images"] == 4 + 3 + 2 * len(labels)


def test_train_and_test_crops_share_no_pixel(bench):
    for texture in script.TEXTURES:
        photo = script.photograph(texture)
        manifest = json.loads((bench / texture / "manifest.json").read_text())
        half = photo.shape[0] // 2
        seen = np.zeros((2, *photo.shape), bool)  # the pixels each split's crops cover
        for record in manifest["images"]:
            top, left, size = record["crop"]
            # Inside one quadrant: train top-left or bottom-right, test the other two.
            assert (top + size <= half or top >= half) and (left + size <= half or left >= half)
            diagonal = (top >= half) == (left >= half)
            assert diagonal == (record["split"] == "train")
            seen[int(record["split"] == "train"), top:top + size, left:left + size] = True
            if record["kind"] is None:  # the file is that crop of the photograph
                image = read(bench / texture / record["path"])
                assert np.array_equal(image[..., 0], photo[top:top + size, left:left + size])
            if record["kind"] == "foreign":
                assert record["params"]["source"] != texture
        assert not (seen[0] & seen[1]).any()


def test_an_existing_output_is_refused_and_left_alone(bench, tmp_path):
    before = files(bench)
    result = CliRunner().invoke(script.main, ["--out", str(bench), *TINY, "--seed", "1"])
    assert result.exit_code != 0 and "exists already" in result.output
    assert files(bench) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, "--textures", "brick", "--kinds", "spot", "--sizes", "small")  # an empty folder is filled
    assert (empty / "brick" / "test" / "spot_small" / "000.png").is_file()


def test_help_and_bad_options():
    result = CliRunner().invoke(script.main, ["--help"])
    assert result.exit_code == 0 and "synthetic" in result.output and "--seed" in result.output
    bad = CliRunner().invoke(script.main, ["--out", "unused", "--kinds", "dent"])
    assert bad.exit_code != 0 and "unknown defect kind dent" in bad.output


def test_perlin_noise_is_seeded_and_smooth():
    a = script.perlin((64, 64), 16, np.random.default_rng(3))
    b = script.perlin((64, 64), 16, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, script.perlin((64, 64), 16, np.random.default_rng(4)))
    assert np.abs(a).max() <= 1.5 and a.std() > 0.1
    assert np.abs(np.diff(a, axis=0)).max() < 0.3  # neighbours differ little: smooth, not white noise


def test_a_change_too_small_to_see_is_raised_to_the_minimum():
    image = np.full((4, 4, 3), 250, np.uint8)
    image[0, 0] = 3
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    new = image.astype(np.float64) + 2.0  # +2 everywhere: too little inside, forbidden outside
    out, shifted = script.apply_defect(image, new, mask)
    assert shifted == 4
    change = out.astype(int) - image.astype(int)
    assert np.all(change[~mask] == 0)
    assert change[0, 0].tolist() == [10, 10, 10]  # raised in the direction it was changed
    assert change[0, 1].tolist() == [-10, -10, -10]  # 250 + 10 would clip: moved down instead
