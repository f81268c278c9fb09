import json

import h5py
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.store.cache import ArraySpec, FeatureCache
from pipeline.store.hdf5 import export_hdf5, import_hdf5

META = {"dataset": {"name": "toy", "classes": ["a", "b"]}, "backbone": {"name": "net"},
        "preprocessing": {"image_size": 32, "resize": "resize"}}


def make_cache(path, n_train=10, n_test=6, dim=4, complete=True):
    specs = [ArraySpec("features", (dim,), "float32"), ArraySpec("labels", (), "int64")]
    cache = FeatureCache.create(path, META, {"train": specs, "test": specs}, {"train": n_train, "test": n_test},
                                chunk_rows=4)
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        features = rng.normal(size=(n, dim)).astype(np.float32)
        labels = np.arange(n) % 2
        data[split] = (features, labels)
        if complete:
            for chunk, rows in enumerate(cache.chunk_slices(split)):
                cache.write_chunk(split, chunk, {"features": features[rows], "labels": labels[rows]})
    if complete:
        cache.mark_complete()
    return cache, data


def test_round_trip_numpy_and_dask(tmp_path):
    cache, data = make_cache(tmp_path / "c.zarr")
    reopened = FeatureCache.open(tmp_path / "c.zarr")
    for split, (features, labels) in data.items():
        np.testing.assert_array_equal(reopened.features(split), features)
        np.testing.assert_array_equal(reopened.labels(split), labels)
        np.testing.assert_array_equal(reopened.dask(split).compute(), features)
        assert reopened.dask(split).chunks[0] == tuple(r.stop - r.start for r in reopened.chunk_slices(split))
    np.testing.assert_array_equal(reopened.features("train", np.array([1, 7])), data["train"][0][[1, 7]])
    assert reopened.classes == ["a", "b"]
    assert reopened.array("train").chunks == (4, 4)


def test_incomplete_cache_is_refused_with_the_repair_command(tmp_path):
    make_cache(tmp_path / "c.zarr", complete=False)
    with pytest.raises(PipelineError, match="incomplete.*pipeline.extract"):
        FeatureCache.open(tmp_path / "c.zarr")
    assert not FeatureCache.open(tmp_path / "c.zarr", require_complete=False).is_complete


def test_cannot_mark_complete_with_missing_chunks(tmp_path):
    cache, _ = make_cache(tmp_path / "c.zarr", complete=False)
    cache.write_chunk("train", 0, {"features": np.zeros((4, 4)), "labels": np.zeros(4)})
    with pytest.raises(PipelineError, match="missing"):
        cache.mark_complete()
    assert not cache.is_complete


def test_metadata_mismatch_is_refused_naming_each_difference(tmp_path):
    cache, _ = make_cache(tmp_path / "c.zarr")
    cache.check_matches({"backbone": {"name": "net"}, "preprocessing": {"image_size": 32}})
    with pytest.raises(PipelineError) as info:
        cache.check_matches({"backbone": {"name": "resnet50"}, "preprocessing": {"image_size": 224}})
    message = str(info.value)
    assert "backbone.name is 'net' in the cache but 'resnet50'" in message
    assert "preprocessing.image_size is 32 in the cache but 224" in message


def test_open_errors(tmp_path):
    with pytest.raises(PipelineError, match="no feature cache"):
        FeatureCache.open(tmp_path / "missing.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(PipelineError, match="not a feature cache"):
        FeatureCache.open(tmp_path / "junk.zarr")


def test_hdf5_round_trip(tmp_path):
    cache, data = make_cache(tmp_path / "c.zarr")
    export_hdf5(cache, tmp_path / "f.h5")
    imported = import_hdf5(tmp_path / "f.h5", tmp_path / "back.zarr")
    assert imported.is_complete
    for split, (features, labels) in data.items():
        np.testing.assert_array_equal(imported.features(split), features)
        np.testing.assert_array_equal(imported.labels(split), labels)
    assert imported.metadata["backbone"] == META["backbone"]
    assert imported.classes == ["a", "b"]


def write_h5(path, train=None, test=None, **attrs):
    rng = np.random.default_rng(0)
    train = train if train is not None else (rng.normal(size=(8, 3)).astype(np.float32), np.arange(8) % 2)
    test = test if test is not None else (rng.normal(size=(4, 3)).astype(np.float32), np.arange(4) % 2)
    with h5py.File(path, "w") as f:
        for split, (features, labels) in (("train", train), ("test", test)):
            if features is not None:
                f[f"{split}/features"] = features
            if labels is not None:
                f[f"{split}/labels"] = labels
        for key, value in attrs.items():
            f.attrs[key] = value


def test_hdf5_import_of_foreign_features_uses_attrs(tmp_path):
    write_h5(tmp_path / "f.h5", classes=json.dumps(["cat", "dog"]), backbone="clip", dataset="pets")
    cache = import_hdf5(tmp_path / "f.h5", tmp_path / "c.zarr")
    assert cache.classes == ["cat", "dog"]
    assert cache.metadata["backbone"]["name"] == "clip"
    assert cache.metadata["dataset"]["name"] == "pets"


@pytest.mark.parametrize("case, message", [
    ("nan", "NaN or Inf"),
    ("inf", "NaN or Inf"),
    ("3d", "must be 2-D"),
    ("int_features", "floating point"),
    ("float_labels", "integer"),
    ("length", "rows but"),
    ("missing", "no dataset /test/labels"),
    ("dims", "different dimensions"),
    ("label_range", "must lie in"),
])
def test_hdf5_import_rejects_bad_files(tmp_path, case, message):
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(8, 3)).astype(np.float32), np.arange(8) % 2
    bad = {
        "nan": dict(train=(np.where(np.arange(24).reshape(8, 3) == 13, np.nan, features), labels)),
        "inf": dict(test=(np.full((4, 3), np.inf, np.float32), np.arange(4) % 2)),
        "3d": dict(train=(features.reshape(8, 3, 1), labels)),
        "int_features": dict(train=(np.ones((8, 3), np.int32), labels)),
        "float_labels": dict(train=(features, labels.astype(float))),
        "length": dict(train=(features, labels[:5])),
        "missing": dict(test=(features[:4], None)),
        "dims": dict(test=(rng.normal(size=(4, 5)).astype(np.float32), np.arange(4) % 2)),
        "label_range": dict(train=(features, labels), classes=json.dumps(["only"])),
    }[case]
    write_h5(tmp_path / "f.h5", **bad)
    with pytest.raises(PipelineError, match=message):
        import_hdf5(tmp_path / "f.h5", tmp_path / "c.zarr")
    # Nothing is left behind.
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "c.zarr.importing").exists()


def test_hdf5_import_of_a_non_hdf5_file(tmp_path):
    (tmp_path / "f.h5").write_text("not hdf5")
    with pytest.raises(PipelineError, match="not a readable HDF5"):
        import_hdf5(tmp_path / "f.h5", tmp_path / "c.zarr")
