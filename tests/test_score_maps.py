"""``ffad score --maps DIR``: one anomaly-map overlay PNG per scored image, for heads that
localise, through the real command (pipeline.scoring.main).

The patch heads (patchcore, padim) are tested here once they are registered; until then a tiny
localising head defined below (each patch's squared distance to the training patches' mean, on
the finest full-resolution map) is registered for the test only, by replacing the registry
lookup of ``pipeline.heads.loading``, so that the command path is tested whatever the patch
heads' state."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from cli_results import error_line  # noqa: E402

from pipeline.files import safe_filename  # noqa: E402
from pipeline.heads.base import Features, Head  # noqa: E402

IMAGE_SIZE = 64
FAKE = "fakemaps"
CLI = ["--device", "cpu", "--workers", "0", "--batch-size", "4"]


@dataclass(eq=False, repr=False, kw_only=True)
class PatchDistanceHead(Head):
    """A localising head for the test: a patch's anomaly is its squared distance to the mean
    training patch of the finest full-resolution map; an image's score the grid's maximum; its
    map the grid upsampled (bilinear) to the input's side."""

    name = FAKE
    needs_trunk = True
    localises = True

    def _fit(self, features, labels, callback) -> None:
        self.stage_ = max(sorted(features.trunk), key=lambda name: features.trunk[name].shape[-1])
        self.mean_ = np.asarray(features.trunk[self.stage_], dtype=np.float64).mean(axis=(0, 2, 3))

    def _grid(self, features) -> np.ndarray:
        maps = np.asarray(Features.of(features).trunk[self.stage_], dtype=np.float64)
        return ((maps - self.mean_[None, :, None, None]) ** 2).sum(axis=1)

    def score_samples(self, features) -> np.ndarray:
        return self._grid(features).max(axis=(1, 2))

    def anomaly_maps(self, features, size: int) -> np.ndarray:
        grid = torch.from_numpy(self._grid(features)).float().unsqueeze(1)
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()

    def _state(self) -> dict:
        return {"stage": self.stage_, "mean": self.mean_, "threshold_quantile": self.threshold_quantile}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "PatchDistanceHead":
        head = cls(threshold_quantile=state["threshold_quantile"])
        head.stage_, head.mean_ = state["stage"], np.asarray(state["mean"], dtype=np.float64)
        return head


@pytest.fixture
def fake_registered(monkeypatch):
    """The test's head loadable by kind, as a registered head is (``loading.load_head``)."""
    import pipeline.heads.loading as loading

    original = loading.head_class
    monkeypatch.setattr(loading, "HEADS", (*loading.HEADS, FAKE))
    monkeypatch.setattr(loading, "head_class", lambda kind: PatchDistanceHead if kind == FAKE else original(kind))


def picture(rng, defect: bool) -> np.ndarray:
    """A 40 x 48 smooth gradient with noise; a defect: a bright square in its upper left."""
    y, x = np.mgrid[0:40, 0:48]
    image = np.stack([60 + 2 * x, 80 + 2 * y, 120 + 0 * x], axis=-1) + rng.normal(0, 6, (40, 48, 3))
    if defect:
        image[6:18, 8:22] = (255, 250, 20)
    return np.clip(image, 0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def patch_cache(tmp_path_factory):
    """An image folder (train: 8 normal; test: 3 normal, 2 with a defect, one file named with
    capitals and a space) and its cache with the backbone's patch maps, at 64 x 64."""
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.extraction import extract
    from pipeline.extract.preprocess import Preprocessing

    root = tmp_path_factory.mktemp("images") / "folder"
    rng = np.random.default_rng(0)
    for i in range(8):
        save_png(root / "train" / "good" / f"n{i}.png", picture(rng, False))
    for i in range(3):
        save_png(root / "test" / "good" / f"n{i}.png", picture(rng, False))
    save_png(root / "test" / "good" / "d0.png", picture(rng, True))
    save_png(root / "test" / "good" / "Odd Name.PNG", picture(rng, True))
    cache = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=IMAGE_SIZE),
                    root.parent / "folder.zarr", chunk_rows=8, batch_size=8, workers=0, device="cpu",
                    patch_maps=("patch",))
    return root, cache


def saved_head(cache, head, path: Path) -> Path:
    from pipeline.evaluate import read_features
    from pipeline.heads.saving import save_trained_head

    train = read_features(cache, "train", trunk=True)
    return save_trained_head(path, head.fit(train), class_name="good", cache=cache, train_features=train)


def score(*args: str):
    from pipeline.scoring import main

    return CliRunner().invoke(main, [*args, *CLI])


def expected_overlays(head_path: Path, images: Path) -> tuple[dict[str, np.ndarray], np.ndarray, float, float]:
    """What the command should draw, computed here the long way: the images' features as the
    command makes them, the head's maps, one range for all (the 1st and 99.9th percentiles),
    each map over its image; by the file name under ``images`` made safe, + .png."""
    from pipeline.heads.loading import load_head
    from pipeline.extract.masks import input_image
    from pipeline.heatmaps import overlay
    from pipeline.scoring import find_images, image_features, image_preprocessing

    saved = load_head(head_path)
    paths, _ = find_images(images)
    preprocessing = image_preprocessing(saved)
    features, maps = image_features(saved, paths, torch.device("cpu"), batch_size=4, preprocessing=preprocessing)
    anomaly_maps = np.asarray(saved.head.anomaly_maps({"pooled": features, **maps}, IMAGE_SIZE))
    low, high = np.percentile(anomaly_maps, [1, 99.9])
    drawn = {safe_filename(p.relative_to(images).as_posix(), ".png"):
             overlay(input_image(p, preprocessing), m, low, high) for p, m in zip(paths, anomaly_maps)}
    return drawn, anomaly_maps, float(low), float(high)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_maps_run(head_path: Path, root: Path, tmp_path: Path) -> np.ndarray:
    """--maps on the test folder (a subfolder: names hashed) and on its class folder (plain
    names kept): the PNGs are the overlays computed the long way, the CSV is the one written
    without --maps, and the command says where the maps went and their range."""
    images = root / "test"
    plain = score("--head", str(head_path), "--images", str(images), "--out", str(tmp_path / "plain.csv"))
    assert plain.exit_code == 0, plain.output
    maps_dir = tmp_path / "maps"
    result = score("--head", str(head_path), "--images", str(images), "--out", str(tmp_path / "scores.csv"),
                   "--maps", str(maps_dir))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scores.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()  # nothing added
    drawn, anomaly_maps, low, high = expected_overlays(head_path, images)
    assert len(drawn) == 5 and sorted(p.name for p in maps_dir.iterdir()) == sorted(drawn)
    assert "good_n0.png--" in " ".join(drawn) and "good_Odd_Name.PNG--" in " ".join(drawn)  # readable, hashed
    for name, rgb in drawn.items():
        np.testing.assert_array_equal(read_png(maps_dir / name), rgb, err_msg=name)
    assert (f"wrote 5 anomaly maps over their images to {maps_dir} (colours from {low:.6g} to {high:.6g}: the 1st "
            f"and 99.9th percentiles of this run's map values)") in result.output
    # A flat folder: plain lower-case names are kept, + .png.
    flat_dir = tmp_path / "flat"
    result = score("--head", str(head_path), "--images", str(images / "good"), "--out", str(tmp_path / "g.csv"),
                   "--maps", str(flat_dir))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in flat_dir.iterdir())
    assert names[1:] == ["d0.png.png", "n0.png.png", "n1.png.png", "n2.png.png"]
    assert names[0].startswith("Odd_Name.PNG--") and names[0].endswith(".png")
    return anomaly_maps


def test_maps_of_a_localising_head_are_its_maps_over_the_images(patch_cache, tmp_path, fake_registered):
    root, cache = patch_cache
    head_path = saved_head(cache, PatchDistanceHead(), tmp_path / "heads" / "good.head")
    anomaly_maps = check_maps_run(head_path, root, tmp_path)
    # The defect images ("Odd Name", then d0: the listing is sorted) are hottest in their bright square's
    # corner of the input (the square covers rows 6-18 and columns 8-22 of 40 x 48: the upper left quarter).
    for index in (0, 1):
        y, x = np.unravel_index(np.argmax(anomaly_maps[index]), anomaly_maps[index].shape)
        assert y < IMAGE_SIZE // 2 and x < IMAGE_SIZE // 2, (index, y, x)


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_maps_of_the_patch_heads(patch_cache, tmp_path, name):
    from pipeline.heads import registry

    pytest.importorskip(f"pipeline.heads.{name}.head", reason=f"the {name} head is not written yet")
    if name not in registry.HEADS:
        pytest.skip(f"the {name} head is not registered yet (pipeline.heads.registry.HEADS)")
    root, cache = patch_cache
    head = registry.head_class(name)()
    assert head.localises
    check_maps_run(saved_head(cache, head, tmp_path / "heads" / "good.head"), root, tmp_path)


def test_maps_are_refused_before_anything_is_written(patch_cache, tmp_path, fake_registered):
    from pipeline.heads.knn.head import KNNHead
    from pipeline.heads.saving import save_trained_head

    root, cache = patch_cache
    images = root / "test"
    before = sorted(images.rglob("*"))
    heads = tmp_path / "heads"
    knn = save_trained_head(heads / "knn.head", KNNHead(k=2).fit(cache.features("train")), class_name="good",
                            cache=cache, train_features=cache.features("train"))
    fake = saved_head(cache, PatchDistanceHead(), heads / "good.head")
    out = tmp_path / "scores.csv"

    def refused(*args: str) -> str:
        line = error_line(score(*args, "--out", str(out)))
        assert not out.exists() and not (tmp_path / "maps").exists()
        assert sorted(images.rglob("*")) == before
        return line

    line = refused("--head", str(knn), "--images", str(images), "--maps", str(tmp_path / "maps"))
    assert "--maps needs a head that localises (patchcore, padim)" in line and "knn head" in line
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = cache.features("test")
    line = refused("--head", str(knn), "--features", str(tmp_path / "f.h5"), "--maps", str(tmp_path / "maps"))
    assert "--maps goes with --images" in line
    for target, relation in ((images, "is"), (images / "maps", "lies inside"), (images / "good", "lies inside"),
                             (fake, "is"), (heads, "holds"), (tmp_path, "holds")):
        line = refused("--head", str(fake), "--images", str(images), "--maps", str(target))
        assert line.startswith(f"Error: --maps {target}") and f" {relation} " in line, line
    (tmp_path / "taken").write_text("a file")
    line = refused("--head", str(fake), "--images", str(images), "--maps", str(tmp_path / "taken"))
    assert "is a file, not a folder" in line


def test_help_says_what_the_colours_mean():
    from pipeline.scoring import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--maps DIR" in text and "patchcore, padim" in text
    assert "1st to the 99.9th percentile of all the map values of this run" in text
