"""Scale-out: head jobs on a Dask cluster, out-of-core kNN, sharded extraction."""

from __future__ import annotations

import json
import os
import subprocess
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.store.cache import ArraySpec, FeatureCache
from pipeline.distributed import SchedulerSpec, open_client, parse_scheduler
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_one_vs_all
from pipeline.heads.knn.head import KNNHead
from pipeline.heads.plume.head import PlumeHead
from pipeline.heads.knn.engine import knn_scores, knn_scores_dask

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    """One local cluster of 2 worker processes for the module (starting one takes seconds)."""
    with open_client("local:2") as c:
        yield c


# --- the --scheduler option ------------------------------------------------------------

def test_parse_scheduler_values():
    assert parse_scheduler(None) is None and parse_scheduler("") is None and parse_scheduler("  ") is None
    assert parse_scheduler("local:3") == SchedulerSpec("local", workers=3)
    assert parse_scheduler("node12:8786") == SchedulerSpec("address", address="tcp://node12:8786")
    assert parse_scheduler("tls://10.0.0.5:8786") == SchedulerSpec("address", address="tls://10.0.0.5:8786")


@pytest.mark.parametrize("value", ["local", "local:", "local:0", "local:two", "cluster", "node12:99999",
                                   "http://x:1", "missing-scheduler.json"])
def test_bad_scheduler_values_are_clean_errors(value, tmp_path):
    with pytest.raises(PipelineError) as error:
        parse_scheduler(value)
    assert "\n" not in error.value.message and "--scheduler" in error.value.message
    # And from the command line: one "Error:" paragraph, no traceback, before any work.
    from pipeline.commands.knn import main

    result = CliRunner().invoke(main, ["--cache", str(tmp_path / "none.zarr"), "--scheduler", value])
    assert result.exit_code == 1 and result.output.startswith("Error: --scheduler")
    assert "Traceback" not in result.output


def test_unreachable_scheduler_is_a_clean_error():
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(PipelineError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            with open_client("127.0.0.1:9"):
                pass


# --- head jobs on the cluster ---------------------------------------------------------

def test_knn_stage_local_cluster_writes_the_same_metrics_file(synthetic_cache, tmp_path):
    from pipeline.commands.knn import main

    files = {}
    for name, extra in (("serial", []), ("local2", ["--scheduler", "local:2"])):
        files[name] = tmp_path / f"{name}.json"
        result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--device", "cpu",
                                           "--metrics", str(files[name]), "--plots", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert files["serial"].read_bytes() == files["local2"].read_bytes()
    for roc in (tmp_path / "serial").glob("roc_*.json"):
        assert roc.read_bytes() == (tmp_path / "local2" / roc.name).read_bytes()


def test_knn_jobs_stream_and_out_of_core_equal_in_process(synthetic_cache, client):
    make_head = KNNHead(k=2)
    serial = evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2])
    assert evaluate_one_vs_all(synthetic_cache, make_head, [2, 0], client=client) == {
        name: serial[name] for name in (synthetic_cache.classes[2], synthetic_cache.classes[0])}
    assert evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], client=client, train_access="stream") == serial
    assert evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], train_access="dask") == serial
    assert evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], train_access="dask", client=client) == serial


def test_plume_jobs_equal_in_process(synthetic_cache, client):
    """PLUME on CPU is deterministic for a seed and a number of torch threads. The workers of
    local:N run torch with cores // N threads, and float32 sums split over a different number
    of threads round differently in the last bits (the training curves then differ at ~1e-7
    relative, see the closing note). With the same thread count (1 here) everything is equal,
    curves included; the metrics are also checked against a default-threaded run within a
    tolerance."""
    make_head = PlumeHead(epochs=2, min_steps=0, dim="native", lr=1e-3, batch_size=16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], seeds=[0, 1], track_epochs=True)
    finally:
        torch.set_num_threads(threads)
    distributed = evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], seeds=[0, 1], track_epochs=True, client=client)
    assert list(distributed) == list(serial)
    assert distributed == serial
    default_threads = evaluate_one_vs_all(synthetic_cache, make_head, [0, 1, 2], seeds=[0, 1], track_epochs=True)
    for name in serial:
        for metric, value in serial[name]["metrics"].items():
            assert default_threads[name]["metrics"][metric] == pytest.approx(value, abs=0.03), (name, metric)


def test_a_failing_job_raises_its_error(synthetic_cache, client):
    with pytest.raises(PipelineError, match="fewer than k"):
        evaluate_one_vs_all(synthetic_cache, KNNHead(k=10_000), [0], client=client)


# --- out-of-core kNN ------------------------------------------------------------------

def test_dask_knn_equals_in_memory_knn(tmp_path):
    import dask.array as da

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((70, 24)).astype(np.float32)
    expected = knn_scores(gallery, queries, k=3)
    # Uneven blocks, blocks smaller than k, a gallery chunked along the features too.
    for chunks in ((128, 24), (300, 24), ((500, 1, 1, 498), (24,)), (100, 8)):
        scores = knn_scores_dask(da.from_array(gallery, chunks=chunks), queries, k=3, split_every=3)
        np.testing.assert_allclose(scores, expected, rtol=1e-6)
    with pytest.raises(PipelineError, match="at least 3"):
        knn_scores_dask(da.from_array(gallery[:2]), queries, k=3)


def test_dask_rows_of_a_cache_are_checked(synthetic_cache):
    rows = np.array([0, 3, 15, 16, 40, 71])
    np.testing.assert_array_equal(synthetic_cache.dask_rows("train", rows=rows).compute(),
                                  synthetic_cache.read("train", rows=rows))
    whole = synthetic_cache.dask_rows("test")
    assert whole.numblocks[0] == len(synthetic_cache.chunk_slices("test"))
    np.testing.assert_array_equal(whole.compute(), synthetic_cache.read("test"))


# --- sharded extraction ---------------------------------------------------------------

def _extract(out, **kwargs):
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.extraction import extract
    from pipeline.extract.preprocess import Preprocessing

    return extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), out,
                   maps=("intermediate",), map_grid=2, trunk_maps="panda", chunk_rows=16, batch_size=8, workers=0,
                   **kwargs)


def test_two_shards_make_the_same_cache_as_one_run(synthetic_cache, tmp_path):
    out = tmp_path / "sharded.zarr"
    first = _extract(out, shard=(0, 2))
    assert not first.is_complete
    missing = first.missing_chunks()
    assert missing == {"train": [1, 3], "test": [0, 2]}  # round-robin over train 0-4, then test 0-2
    with pytest.raises(PipelineError, match="incomplete"):
        FeatureCache.open(out)
    _extract(out, shard=(1, 2))
    sharded = FeatureCache.open(out)
    assert sharded.verify() == []
    for split in ("train", "test"):
        for name in synthetic_cache.array_names(split):
            a, b = synthetic_cache.array(split, name)[:], sharded.array(split, name)[:]
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (split, name)
    # The same chunk records and checksums, in the same order, as the single run.
    assert json.dumps(sharded.group.attrs["chunks"]) == json.dumps(synthetic_cache.group.attrs["chunks"])
    assert sharded.metadata == synthetic_cache.metadata
    # Running a shard again on the finished cache does nothing.
    assert _extract(out, shard=(0, 2)).is_complete


def test_parse_shard_and_bad_shards(tmp_path):
    from pipeline.extract.command import main, parse_shard

    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for value in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(PipelineError, match="--shard"):
            parse_shard(value)
    result = CliRunner().invoke(main, ["--dataset", "synthetic", "--shard", "2/2", "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 1 and result.output.startswith("Error: --shard")


WRITE_CHUNKS = """
import sys
import numpy as np
from pipeline.store.cache import FeatureCache
cache = FeatureCache.open(sys.argv[1], require_complete=False)
for chunk in range(int(sys.argv[2]), 40, 2):
    rows = cache.chunk_slices("train")[chunk]
    cache.write_chunk("train", chunk, {"features": np.full((rows.stop - rows.start, 4), chunk, np.float32),
                                       "labels": np.zeros(rows.stop - rows.start, np.int64)})
"""


def test_concurrent_writers_keep_every_chunk_record(tmp_path):
    """Two processes recording chunks of one store at once (what shards do) lose none."""
    path = tmp_path / "shared.zarr"
    FeatureCache.create(path, {"dataset": {"classes": ["a"]}}, {"train": [ArraySpec("features", (4,), "float32"),
                                                                        ArraySpec("labels", (), "int64")]},
                        {"train": 80}, chunk_rows=2)
    writers = [subprocess.Popen([sys.executable, "-c", WRITE_CHUNKS, str(path), str(i)]) for i in (0, 1)]
    assert [w.wait(120) for w in writers] == [0, 0]
    cache = FeatureCache.open(path, require_complete=False)
    assert cache.done_chunks("train") == set(range(40))
    assert cache.mark_complete() and cache.verify() == []
    assert all(cache.features("train", [2 * c])[0, 0] == c for c in range(40))


@pytest.mark.slow
def test_two_shard_processes_at_once(tmp_path):
    """Two real extraction processes writing one cache at the same time, as on a multi-GPU node,
    against one process doing the whole extraction."""
    command = [sys.executable, "-m", "pipeline.extract", "--dataset", "synthetic", "--image-size", "32",
               "--maps", "intermediate", "--map-grid", "2", "--chunk-rows", "16", "--batch-size", "8", "--workers", "0"]
    # Features are byte-identical at equal torch thread counts (float32 sums split over another
    # number of threads round differently), so every process gets one thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([*command, "--out", str(tmp_path / "one.zarr")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stdout + single.stderr
    out = tmp_path / "two.zarr"
    shards = [subprocess.Popen([*command, "--out", str(out), "--shard", f"{i}/2"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    reference, sharded = FeatureCache.open(tmp_path / "one.zarr"), FeatureCache.open(out)
    assert sharded.verify() == []
    for split in ("train", "test"):
        for name in reference.array_names(split):
            assert reference.array(split, name)[:].tobytes() == sharded.array(split, name)[:].tobytes(), (split, name)
    check = subprocess.run([sys.executable, "-m", "pipeline.cache", "verify", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_workers_started_elsewhere_get_absolute_paths_and_a_clear_error(synthetic_cache, tmp_path, monkeypatch):
    """Jobs carry resolved paths, so workers started in another folder find the cache given as
    a relative path; a worker that cannot see the cache names itself and the path."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with open_client("local:1") as remote:  # its worker starts in `elsewhere`
        monkeypatch.chdir(synthetic_cache.path.parent)
        relative = FeatureCache.open(synthetic_cache.path.name)
        serial = evaluate_one_vs_all(synthetic_cache, KNNHead(k=2), [0, 1])
        assert evaluate_one_vs_all(relative, KNNHead(k=2), [0, 1], client=remote) == serial
        assert evaluate_one_vs_all(relative, KNNHead(k=2), [0, 1], train_access="dask", client=remote) == serial
        moved = tmp_path / "moved.zarr"
        shutil.copytree(synthetic_cache.path, moved)
        gone = FeatureCache.open(moved)
        shutil.rmtree(moved)  # seen by this process when opened, not by the worker now
        with pytest.raises(PipelineError, match=rf"{moved}.*cannot be read on .*process .*every worker sees"):
            evaluate_one_vs_all(gone, KNNHead(k=2), [0], client=remote)
