"""The exact bfloat16 kNN path (pipeline/heads/knn/reduced.py) against brute force in float64:
the same k nearest on random, tied, clustered and adversarial data, each fallback pass, the
bounds themselves, and the option through the head and the command."""

import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import PipelineError
from pipeline.heads.knn import reduced
from pipeline.heads.knn.engine import knn_certified, knn_distances, knn_scores_dask
from pipeline.heads.knn.head import KNNHead

# Small blocks and tiles, two workers: several gallery blocks (tau shifts), query tiles and threads.
SMALL = dict(query_block=16, gallery_block=96, workers=2)


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int):
    """(k smallest squared distances, their rows, all distances), plainly in float64."""
    distances = ((queries.astype(np.float64)[:, None, :] - gallery.astype(np.float64)[None]) ** 2).sum(-1)
    rows = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, rows, 1), rows, distances


def assert_exact(found, gallery, queries, k):
    """The k nearest: distances are the exact ones rounded to float32, each index is a row at
    that distance, no row twice; with no ties at the k-th place, the very rows of brute force."""
    expected, rows, everything = brute_force(gallery, queries, k)
    np.testing.assert_allclose(found.distances, expected, rtol=1.2e-7, atol=0)
    assert found.distances.dtype == np.float32
    own = np.take_along_axis(everything, found.indices, 1)
    np.testing.assert_allclose(own, expected, rtol=1e-12, atol=0)
    assert all(len(set(r)) == k for r in found.indices)
    kth_next = np.sort(everything, axis=1)[:, k] if everything.shape[1] > k else np.full(len(queries), np.inf)
    untied = kth_next > expected[:, -1]
    for got, want in zip(found.indices[untied], rows[untied]):
        assert set(got) == set(want)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_random_data_gives_the_exact_k_nearest_mostly_from_the_first_screen(k):
    rng = np.random.default_rng(k)
    gallery = np.abs(rng.normal(size=(400, 48))).astype(np.float32)
    queries = np.abs(rng.normal(size=(60, 48))).astype(np.float32)
    found = knn_certified(gallery, queries, k=k, **SMALL)
    assert_exact(found, gallery, queries, k)
    assert found.passes()["bfloat16 screen"] >= 0.9 * len(queries)
    # The same distances through knn_distances; the float32 path agrees to float32 rounding.
    np.testing.assert_array_equal(knn_distances(gallery, queries, k=k, precision="bfloat16", **SMALL),
                                  found.distances)
    np.testing.assert_allclose(knn_distances(gallery, queries, k=k), found.distances, rtol=1e-5)


def test_ties_and_duplicate_rows():
    rng = np.random.default_rng(7)
    # Small integers: many exactly equal distances; every row three times; queries on rows.
    base = rng.integers(0, 3, size=(80, 12)).astype(np.float32)
    gallery = np.concatenate([base, base, base])[rng.permutation(240)]
    queries = np.concatenate([base[:20], rng.integers(0, 3, size=(20, 12)).astype(np.float32)])
    for k in (1, 2, 5):
        found = knn_certified(gallery, queries, k=k, **SMALL)
        assert_exact(found, gallery, queries, k)
        assert np.all(found.distances[:20, :min(k, 3)] == 0)  # the query's own three copies


@pytest.mark.parametrize("k", [1, 3, 5])
def test_clustered_rows_with_a_large_common_mean(k):
    rng = np.random.default_rng(10 + k)
    centres = rng.normal(size=(8, 64))
    gallery = (100 + centres[rng.integers(0, 8, 500)] + 0.7 * rng.normal(size=(500, 64))).astype(np.float32)
    queries = (100 + centres[rng.integers(0, 8, 50)] + 0.7 * rng.normal(size=(50, 64))).astype(np.float32)
    found = knn_certified(gallery, queries, k=k, **SMALL)
    assert_exact(found, gallery, queries, k)
    # Centring on the mean is what makes the screen work here: |x|^2 is ~ 6e5, distances ~ 60.
    assert found.passes()["bfloat16 screen"] >= 0.8 * len(queries)
    tight = tight_clusters(rng, 550)
    assert_exact(knn_certified(tight[:500], tight[500:], k=k, **SMALL), tight[:500], tight[500:], k)


def tight_clusters(rng, n: int, d: int = 64) -> np.ndarray:
    """Clusters of spread 0.1 around centres of norm ~8, all at 100: after centring on the mean,
    distances (~1) are close next to the bfloat16 bound (~0.4), not next to float32's."""
    centres = np.random.default_rng(0).normal(size=(8, d))
    return (100 + centres[rng.integers(0, 8, n)] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def near_duplicates(rng, n: int, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries): 300 rows within 1e-3 of one point and 300 far from it, queries near
    the point. Centred on the mean, the near rows sit ~25 from it, where bfloat16 steps by 0.125
    and float32 by 2e-6: neither can tell them apart; float64 can."""
    base = 2 + np.random.default_rng(0).normal(size=d)
    gallery = np.concatenate([base + 1e-3 * rng.normal(size=(300, d)), base + 50 + rng.normal(size=(300, d))])
    return gallery.astype(np.float32), (base + 1e-3 * rng.normal(size=(n, d))).astype(np.float32)


def test_each_fallback_pass_is_exact():
    rng = np.random.default_rng(3)
    # One candidate more than k: a few queries need more candidates.
    spread = rng.normal(size=(340, 128)).astype(np.float32)
    found = knn_certified(spread[:300], spread[300:], k=2, candidates=3, **SMALL)
    assert found.passes()["bfloat16 screen with more candidates"] > 0
    assert_exact(found, spread[:300], spread[300:], 2)
    tight = tight_clusters(rng, 1000)
    found = knn_certified(tight[:950], tight[950:], k=2, **SMALL)
    assert found.passes()["float32 screen"] > 0
    assert_exact(found, tight[:950], tight[950:], 2)
    gallery, queries = near_duplicates(rng, 20)
    found = knn_certified(gallery, queries, k=2, **SMALL)
    assert found.passes()["float64 screen"] > 0
    assert_exact(found, gallery, queries, 2)
    # More exact ties at the k-th place than any screen keeps (41 copies of a row, 12
    # candidates at most): brute force.
    tied = np.concatenate([np.repeat(spread[:1], 40, 0), spread[:300]])
    near = (spread[0] + 0.01 * rng.normal(size=(5, 128))).astype(np.float32)
    found = knn_certified(tied, near, k=2, candidates=3, **SMALL)
    assert found.passes()["brute force"] == 5
    assert_exact(found, tied, near, 2)


def test_the_gpu_branch_run_on_cpu_tensors():
    # bf16 x bf16 -> float32 products, as torch.mm(..., out_dtype=float32) gives on a GPU.
    rng = np.random.default_rng(5)
    gallery = (5 + rng.normal(size=(350, 40))).astype(np.float32)
    queries = (5 + rng.normal(size=(30, 40))).astype(np.float32)
    result = reduced.certified_nearest(torch.from_numpy(gallery), torch.from_numpy(queries), 3, 16,
                                       query_block=8, gallery_block=64, workers=2,
                                       product=reduced.EMULATED_GPU_PRODUCT)
    found = type("Found", (), {"distances": result.distances.float().numpy(), "indices": result.indices.numpy()})
    assert_exact(found, gallery, queries, 3)
    assert int((result.answered_by == 0).sum()) >= 25


def adversarial_rows(rng, n: int, d: int) -> np.ndarray:
    """Rows that strain every term of the bound: a large common mean, norms over four orders
    of magnitude, near-duplicates below bfloat16's resolution, tiny values, exact zeros."""
    rows = 300 + rng.normal(size=(n, d))
    rows[: n // 4] *= rng.uniform(0.01, 100, size=(n // 4, 1))
    rows[n // 4: n // 2] = rows[n // 4] + 1e-4 * rng.normal(size=(n // 2 - n // 4, d))
    rows[n // 2: n // 2 + 5] = 1e-30 * rng.normal(size=(5, d))
    rows[-3:] = 0
    return rows.astype(np.float32)


@pytest.mark.parametrize("product", ["cpu", "gpu", "float64"])
def test_the_bounds_hold_for_every_pair(product):
    rng = np.random.default_rng(11)
    gallery = adversarial_rows(rng, 240, 24)
    queries = np.concatenate([adversarial_rows(rng, 40, 24), gallery[50:70] + 1e-5])
    # Extended precision (64-bit significands) for the reference: far below every bound's width.
    exact = torch.from_numpy((((queries.astype(np.longdouble)[:, None] - gallery.astype(np.longdouble)[None]) ** 2)
                              .sum(-1)).astype(np.float64))
    chosen = {"cpu": reduced.product_for("bfloat16", torch.device("cpu")), "gpu": reduced.EMULATED_GPU_PRODUCT,
              "float64": reduced.product_for("float64", torch.device("cpu"))}[product]
    g, q = torch.from_numpy(gallery), torch.from_numpy(queries)
    mean = g.mean(0)
    blocks = [reduced._prepare(g, mean, chosen.dtype, a, b) for a, b in [(0, 32), (32, 128), (128, 240)]]
    short = reduced._screen(blocks, q, mean, 6, chosen)
    kept = torch.zeros_like(exact, dtype=torch.bool).scatter_(1, short.index, True)
    # Candidates: low <= exact <= high; everything else: at least lam.
    at = exact.gather(1, short.index)
    assert bool((short.low <= at).all()) and bool((at <= short.high).all())
    others = torch.where(kept, torch.inf, exact).amin(1)
    assert bool((short.lam <= others).all())
    # Not vacuous: the intervals are narrow next to the distances' spread.
    assert float(((short.high - short.low) / exact.std(1, keepdim=True)).median()) < 0.5


def test_the_screen_passes_over_values_above_the_cutoff_only():
    o = torch.randn(50, 160, generator=torch.Generator().manual_seed(0)).bfloat16()
    o[3, :] = 5  # a row with ties, none below its cutoff
    cutoff = torch.linspace(-2.5, 0.3, 50, dtype=torch.float64)[:, None]
    for count in (4, 40):
        values, columns, more = reduced._smallest(o, count, cutoff)
        assert torch.equal(o.gather(1, columns)[torch.isfinite(values)], values[torch.isfinite(values)])
        for row in range(50):
            below = o[row][o[row].double() < cutoff[row]].double().sort().values[:count]
            got = values[row][torch.isfinite(values[row])].double().sort().values
            # The smallest values below the cutoff are all there (more may come with them, when a
            # loose cutoff makes a plain top-k cheaper); "more" is never False while some are missing.
            assert torch.equal(got[:len(below)], below)
            assert bool(more[row]) or len(o[row][o[row].double() < cutoff[row]]) <= count
    # No cutoff: the plain top-k.
    values, _, more = reduced._smallest(o, 4, None)
    assert torch.equal(values.sort(1).values, o.topk(4, 1, largest=False).values.sort(1).values) and more.all()


def test_near_ties_that_bfloat16_ranks_wrongly_still_give_the_exact_answer():
    rng = np.random.default_rng(13)
    gallery, queries = near_duplicates(rng, 40)
    _, rows, _ = brute_force(gallery, queries, 1)
    mean = gallery.mean(0)
    g16 = torch.from_numpy(gallery - mean).bfloat16().double()
    q16 = torch.from_numpy(queries - mean).bfloat16().double()
    in_bf16 = torch.cdist(q16, g16).argmin(1).numpy()
    assert np.mean(in_bf16 != rows[:, 0]) > 0.5  # the screen's own numbers pick the wrong neighbour
    for k in (1, 2):
        found = knn_certified(gallery, queries, k=k, **SMALL)
        assert_exact(found, gallery, queries, k)
        # The certificate refused the bfloat16 screens' answers; an exact pass gave them.
        assert found.certified_fraction < 0.5


def test_streamed_and_out_of_core_galleries():
    import dask.array as da

    rng = np.random.default_rng(17)
    gallery = np.abs(rng.normal(size=(500, 20))).astype(np.float32)
    queries = np.abs(rng.normal(size=(30, 20))).astype(np.float32)
    whole = knn_certified(gallery, queries, k=2, **SMALL)
    # Pieces of at least gallery_block rows, each searched on its own; indices stay global.
    streamed = knn_certified((gallery[i:i + 37] for i in range(0, 500, 37)), queries, k=2, **SMALL)
    np.testing.assert_array_equal(streamed.distances, whole.distances)
    np.testing.assert_array_equal(np.sort(streamed.indices, 1), np.sort(whole.indices, 1))
    chunked = knn_scores_dask(da.from_array(gallery, chunks=(120, 20)), queries, k=2, precision="bfloat16")
    np.testing.assert_allclose(chunked, whole.distances.sum(1), rtol=1e-6)


def test_refuses_what_cannot_be_certified():
    gallery, queries = np.zeros((10, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(PipelineError, match="float32, bfloat16"):
        knn_distances(gallery, queries, precision="float16")
    with pytest.raises(PipelineError, match="more candidates than k"):
        knn_certified(gallery, queries, k=2, candidates=2)
    with pytest.raises(PipelineError, match="at least 3"):
        knn_certified(gallery[:2], queries, k=3)
    with pytest.raises(PipelineError, match="precision"):
        KNNHead(precision="half").fit(gallery)

    def bfloat16_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.bfloat16)
        for i in range(a.shape[1]):
            total = total + a[:, i:i + 1] * b[i:i + 1]  # rounded to bfloat16 at every step
        return total

    kept_in_bf16 = reduced.Product(torch.bfloat16, bfloat16_sums, 2.0 ** -24, 2.0 ** -7)
    with pytest.raises(PipelineError, match="does not accumulate in float32"):
        reduced._check_accumulation(kept_in_bf16, torch.device("cpu"))


def test_head_scores_diagnostics_saving_and_pickling(tmp_path, monkeypatch):
    import pipeline.heads.knn.head as head_module

    rng = np.random.default_rng(19)
    train = np.abs(rng.normal(size=(300, 16))).astype(np.float32)
    test = np.abs(rng.normal(size=(50, 16))).astype(np.float32)
    exact = KNNHead(k=2, threshold_quantile=None).fit(train).score_samples(test)
    head = KNNHead(k=2, precision="bfloat16").fit(train)
    calls = []
    search = head_module.knn_certified
    monkeypatch.setattr(head_module, "knn_certified", lambda *a, **kw: calls.append(1) or search(*a, **kw))
    scores = head.score_samples(test)
    np.testing.assert_allclose(scores, brute_force(train, test, 2)[0].sum(1), rtol=1e-6)
    np.testing.assert_allclose(scores, exact, rtol=1e-5)
    # The evaluation asks for diagnostics right after scoring the same rows: no second search.
    fraction = head.diagnostics(test)["certified_fraction"]
    assert 0.9 <= fraction <= 1 and len(calls) == 1
    assert "certified_fraction" in head.diagnostics(test.copy()) and len(calls) == 2
    assert KNNHead(k=2).fit(train).diagnostics(test) == {}
    pickle.loads(pickle.dumps(head))  # the remembered search is left out
    head.save(tmp_path / "knn.head")
    assert KNNHead.load(tmp_path / "knn.head").precision == "bfloat16"


def test_command_option_metrics_and_verbose_certificate(synthetic_cache, tmp_path):
    from pipeline import metrics_file
    from pipeline.commands.knn import main

    runner = CliRunner()
    payloads = {}
    for precision in ("float32", "bfloat16"):
        metrics = tmp_path / f"{precision}.json"
        result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--k", "2", "--precision", precision,
                                      "--metrics", str(metrics), "-v"])
        assert result.exit_code == 0, result.output
        payloads[precision] = metrics_file.read(metrics)
        assert payloads[precision]["about"]["precision"] == precision
    assert "test images certified at once" in result.stderr
    fast, plain = payloads["bfloat16"], payloads["float32"]
    assert set(fast["diagnostics"]["per_class"]) == {"class0", "class1", "class2"}
    assert 0 <= fast["diagnostics"]["mean"]["certified_fraction"] <= 1
    assert "diagnostics" not in plain
    for name, metrics in plain["per_class"].items():
        assert fast["per_class"][name]["auroc"] == pytest.approx(metrics["auroc"], abs=1e-9)
    for access in ("--stream", "--out-of-core"):
        result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--k", "2", "--precision", "bfloat16",
                                      access, "--metrics", str(tmp_path / "s.json")])
        assert result.exit_code == 0, result.output
        assert metrics_file.read(tmp_path / "s.json")["mean"]["auroc"] == pytest.approx(plain["mean"]["auroc"],
                                                                                       abs=1e-9)
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--precision", "float16"])
    assert result.exit_code == 2 and "float32" in result.output
