"""Nearest-neighbour distances by blocked matrix products.

||q - g||^2 = ||q||^2 - 2 q.g + ||g||^2 turns the distance computation into one matrix
product per block, the fastest dense kernel on CPU and GPU. Queries and gallery are
processed in blocks so memory stays bounded whatever their sizes, and a running top-k is
merged across gallery blocks. Accumulation is float32 even for float16 inputs.

``precision="bfloat16"`` finds the same neighbours faster: a bfloat16 screen with a proof that
the exact k nearest are among its candidates, then float64 distances (``pipeline.heads.knn.reduced``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError, choice_error
from pipeline.heads.knn import PRECISIONS
from pipeline.heads.knn.reduced import Certified, certified_nearest, merge


def _float32(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device``; no copy when the rows already are one."""
    tensor = torch.as_tensor(rows)
    if tensor.ndim != 2:
        raise PipelineError(f"features must be a 2-D array (samples, dimensions), got shape {tuple(tensor.shape)}.")
    return tensor.to(device=device, dtype=torch.float32)


def knn_distances(gallery: np.ndarray | torch.Tensor | Iterable[np.ndarray], queries: np.ndarray | torch.Tensor,
                  k: int = 2, query_block: int = 1024, gallery_block: int = 8192,
                  device: str | torch.device = "cpu", workers: int | None = None,
                  precision: str = "float32") -> np.ndarray:
    """Squared L2 distances from each query to its ``k`` nearest gallery vectors, ascending.

    ``gallery`` may be an array or an iterable of row blocks (for example Zarr chunks read
    one at a time), so a gallery larger than memory is streamed. Returns (n_queries, k).
    Memory: the queries, one gallery block and, per CPU core, one (query_block x
    gallery_block) block of distances. ``workers``: CPU threads (default: torch's thread count).
    ``precision="bfloat16"``: the same neighbours by ``knn_certified`` (its float64 distances
    rounded to float32, which agree with these to float32 rounding).
    """
    if precision not in PRECISIONS:
        raise choice_error("kNN precision", precision, PRECISIONS)
    if precision != "float32":
        return knn_certified(gallery, queries, k, query_block, gallery_block, device, workers).distances
    device = resolve_device(device)
    queries_t = _float32(queries, device)
    best = torch.full((len(queries_t), k), float("inf"), device=device)
    seen = 0
    with _BlockNearest(queries_t, query_block, workers) as nearest_in:
        for block_t in _gallery_blocks(gallery, gallery_block, queries_t):
            seen += len(block_t)
            merged = torch.cat([best, nearest_in(block_t, min(k, len(block_t)))], dim=1)
            best = torch.topk(merged, k, dim=1, largest=False).values
    _check_enough(seen, k)
    # |q|^2 is the same for a whole row, so it does not change which neighbours are nearest
    # and is added once at the end.
    best += (queries_t * queries_t).sum(1, keepdim=True)
    # Rounding can make a distance of 0 slightly negative.
    return best.clamp_min_(0).cpu().numpy()


def _gallery_blocks(gallery: np.ndarray | torch.Tensor | Iterable[np.ndarray], rows: int,
                    queries: torch.Tensor, min_rows: int = 1) -> Iterator[torch.Tensor]:
    """The gallery as non-empty float32 blocks on the queries' device, checked against their
    dimension: an array in blocks of ``rows``; an iterable's blocks as they come, joined until
    each has at least ``min_rows`` rows (the last may have fewer)."""
    blocks: Iterable = gallery
    if isinstance(gallery, (np.ndarray, torch.Tensor)):
        blocks = (gallery[i:i + rows] for i in range(0, len(gallery), rows))
    pending, count = [], 0
    for block in blocks:
        block_t = _float32(block, queries.device)
        if block_t.shape[1] != queries.shape[1]:
            raise PipelineError(f"gallery features have dimension {block_t.shape[1]} but queries have "
                                f"dimension {queries.shape[1]}.")
        if len(block_t):
            pending.append(block_t)
            count += len(block_t)
        if count >= min_rows:
            yield pending[0] if len(pending) == 1 else torch.cat(pending)
            pending, count = [], 0
    if pending:
        yield torch.cat(pending)


def _check_enough(seen: int, k: int) -> None:
    if seen < k:
        raise PipelineError(f"kNN with k={k} needs at least {k} gallery features, got {seen}.")


def default_candidates(k: int) -> int:
    """Candidates per query kept by the bfloat16 screen: enough for most queries to be
    certified at once on CNN features and on random data (benchmarks/knn_reduced_precision.py)."""
    return max(16, 4 * k)


@dataclass
class Neighbours:
    """The exact k nearest gallery rows of each query (``knn_certified``)."""

    distances: np.ndarray    # (n_queries, k) float32 squared distances, ascending
    indices: np.ndarray      # (n_queries, k) int64 gallery rows (in the order the gallery was given)
    answered_by: np.ndarray  # (n_queries,) which pass answered each query (Certified.PASSES)

    @property
    def certified_fraction(self) -> float:
        """The fraction of queries the bfloat16 screen certified (the rest took a slower pass)."""
        return float(np.mean(self.answered_by <= 1)) if len(self.answered_by) else 1.0

    def passes(self) -> dict[str, int]:
        """How many queries each pass answered."""
        return {name: int(np.sum(self.answered_by == number)) for number, name in enumerate(Certified.PASSES)}


def knn_certified(gallery: np.ndarray | torch.Tensor | Iterable[np.ndarray], queries: np.ndarray | torch.Tensor,
                  k: int = 2, query_block: int = 1024, gallery_block: int = 8192,
                  device: str | torch.device = "cpu", workers: int | None = None,
                  candidates: int | None = None) -> Neighbours:
    """The exact k nearest gallery rows of each query, found by a bfloat16 screen that keeps
    ``candidates`` per query and proves that the k nearest are among them (queries it cannot
    certify are screened again with more candidates, then in float32 and float64, then by brute
    force).

    Distances are computed in float64 from the float32 rows and returned rounded to float32:
    they are the exact ones to float32 rounding, whereas the float32 path's last bits depend
    on where the BLAS puts each pair in its tiles. An array gallery is searched in one piece
    (centred on its mean); an iterable's blocks are joined into pieces of ``gallery_block``
    rows, each searched on its own and the results merged. Memory: a bfloat16 copy of the
    piece (half its float32 size), kept for the second bfloat16 pass, and per worker one
    (query_block x gallery_block) bfloat16 product. ``workers``: CPU threads, each with one
    torch thread (default: torch's thread count).
    """
    device = resolve_device(device)
    queries_t = _float32(queries, device)
    candidates = candidates or default_candidates(k)
    if candidates <= k:
        raise PipelineError(f"the bfloat16 screen needs more candidates than k = {k}, got {candidates}.")
    result, seen = None, 0
    pieces = [gallery] if isinstance(gallery, (np.ndarray, torch.Tensor)) else gallery
    for piece in _gallery_blocks(pieces, gallery_block, queries_t, min_rows=gallery_block):
        part = certified_nearest(piece, queries_t, k, candidates, query_block, gallery_block, workers)
        result = merge(result, part, seen, k)
        seen += len(piece)
    _check_enough(seen, k)
    return Neighbours(result.distances.float().cpu().numpy(), result.indices.cpu().numpy(),
                      result.answered_by.cpu().numpy())


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limits = None


def _single_threaded_blas(change: int) -> None:
    """Count engine calls that need a single-threaded BLAS (+1 on entry, -1 on exit): the limit
    is process-wide, so with calls running side by side (Dask threads) it is set by the first
    and the BLAS's own setting restored by the last, never by one call under another's feet."""
    global _blas_users, _blas_limits
    from threadpoolctl import threadpool_limits

    with _blas_lock:
        if change > 0 and _blas_users == 0:
            _blas_limits = threadpool_limits(1, user_api="blas")
        _blas_users += change
        if change < 0 and _blas_users == 0:
            _blas_limits.restore_original_limits()


class _BlockNearest:
    """``nearest_in(block, k)``: for every query, the k smallest |g|^2 - 2 q.g over one gallery
    block, i.e. the squared distances less |q|^2 (unsorted), computed query block by query block.

    On the GPU this is one ``addmm`` and ``topk`` per query block. On the CPU the matrix
    product goes through NumPy's OpenBLAS and the query blocks are shared among one worker
    thread per core, each with a single-threaded BLAS. Both choices were measured
    (benchmarks/knn_engine.py, 2-core AMD EPYC): PyTorch's MKL sgemm is 1.2-1.5x slower than
    OpenBLAS on this AMD CPU, and a multi-threaded OpenBLAS keeps its threads spinning for a
    while after each call, so they take the cores the top-k that follows needs (+10% in all).
    With one thread per worker every core is busy with either the product or the top-k.
    """

    def __init__(self, queries: torch.Tensor, query_block: int, workers: int | None = None) -> None:
        self.queries, self.query_block = queries, max(1, query_block)
        self.workers = max(1, workers or torch.get_num_threads())
        self.on_cpu = queries.device.type == "cpu"
        self._local = threading.local()  # one reused distance buffer per worker thread

    def __enter__(self) -> "_BlockNearest":
        if self.on_cpu:
            _single_threaded_blas(+1)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="knn")
        return self

    def __exit__(self, *exc) -> None:
        if self.on_cpu:
            self._pool.shutdown()
            _single_threaded_blas(-1)

    def __call__(self, block: torch.Tensor, k: int) -> torch.Tensor:
        norms = (block * block).sum(1)
        starts = range(0, len(self.queries), self.query_block)
        if not self.on_cpu:
            return torch.cat([torch.topk(torch.addmm(norms.unsqueeze(0), self.queries[s:s + self.query_block],
                                                     block.T, beta=1.0, alpha=-2.0),
                                         k, dim=1, largest=False, sorted=False).values for s in starts])
        queries, gallery = self.queries.numpy(), block.numpy()
        # Enough tiles to keep every worker busy: fewer queries per tile when there are few
        # queries, and the block's gallery rows split among the workers when even that is not enough.
        rows = min(self.query_block, -(-len(queries) // self.workers))
        query_tiles = [slice(s, s + rows) for s in range(0, len(queries), rows)]
        parts = max(1, min(self.workers // len(query_tiles), len(gallery) // max(k, 256)))
        edges = np.linspace(0, len(gallery), parts + 1).astype(int)
        gallery_tiles = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]

        def one(tile: tuple[slice, slice]) -> torch.Tensor:
            query_rows, gallery_rows = queries[tile[0]], gallery[tile[1]]
            size = len(query_rows) * len(gallery_rows)
            # A buffer reused across calls: a fresh block of memory each time would be page-faulted in.
            buffer = getattr(self._local, "buffer", None)
            if buffer is None or buffer.size < size:
                buffer = self._local.buffer = np.empty(max(size, rows * len(gallery)), np.float32)
            products = buffer[:size].reshape(len(query_rows), len(gallery_rows))
            np.matmul(query_rows, gallery_rows.T, out=products)
            partial = torch.from_numpy(products).mul_(-2.0).add_(norms[tile[1]])
            return torch.topk(partial, min(k, len(gallery_rows)), dim=1, largest=False, sorted=False).values

        tiles = [(q, g) for q in query_tiles for g in gallery_tiles]
        found = list(self._pool.map(one, tiles))
        if parts == 1:
            return torch.cat(found)
        per_query_tile = [torch.cat(found[i:i + parts], dim=1) for i in range(0, len(found), parts)]
        return torch.cat([torch.topk(t, k, dim=1, largest=False, sorted=False).values for t in per_query_tile])


def knn_scores(gallery, queries, k: int = 2, **kwargs) -> np.ndarray:
    """DN2 anomaly score: sum of squared L2 distances to the k nearest gallery vectors."""
    return knn_distances(gallery, queries, k=k, **kwargs).sum(axis=1)


def knn_loo_distances(gallery: np.ndarray | torch.Tensor, k: int = 2, query_block: int = 4096,
                      device: str | torch.device = "cpu", max_block_entries: int = 1 << 25) -> np.ndarray:
    """Leave-one-out: squared L2 distances from each gallery vector to its ``k`` nearest *other*
    gallery vectors, ascending, (n, k).

    Scoring the training set against itself would give every vector a distance of 0 to
    itself. The vector itself is masked out by its index rather than by dropping the smallest
    distance: rounding can leave the computed self-distance above a genuine neighbour's,
    and an exact duplicate elsewhere in the gallery must still count as a neighbour at 0.
    Same arithmetic as ``knn_distances`` (|q|^2 added after the top-k), so a vector's score
    equals ``knn_scores`` of it against the gallery without it. Memory: one (block x n) matrix,
    at most ``max_block_entries`` floats.
    """
    device = resolve_device(device)
    points = _float32(gallery, device)
    n = len(points)
    if n < k + 1:
        raise PipelineError(f"leave-one-out kNN with k={k} needs at least {k + 1} gallery features, got {n}.")
    norms = (points * points).sum(1)
    block = max(1, min(query_block, max_block_entries // n))
    best = torch.empty((n, k), device=device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        partial = torch.addmm(norms.unsqueeze(0), points[start:stop], points.T, beta=1.0, alpha=-2.0)
        rows = torch.arange(stop - start, device=device)
        partial[rows, rows + start] = float("inf")
        best[start:stop] = torch.topk(partial, k, dim=1, largest=False).values
    best += norms.unsqueeze(1)
    return best.clamp_min_(0).cpu().numpy()


def knn_loo_scores(gallery: np.ndarray | torch.Tensor, k: int = 2, **kwargs) -> np.ndarray:
    """DN2 score of every gallery vector against the others (sum of its leave-one-out distances)."""
    return knn_loo_distances(gallery, k=k, **kwargs).sum(axis=1)


_malloc_fixed = False


def _fix_mmap_threshold() -> None:
    """Make glibc return freed chunk-sized buffers to the system at once.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
    chunk-sized arrays come from the heap, whose freed memory is kept: over a few hundred chunks
    the resident set creeps up by hundreds of MB (measured: 1.02 GB peak instead of 0.73 GB on a
    2M-row gallery). A fixed 1 MB threshold keeps such arrays in mmap. Once per process; a no-op
    where there is no glibc.
    """
    global _malloc_fixed
    if _malloc_fixed:
        return
    _malloc_fixed = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _block_nearest(block: np.ndarray, queries: np.ndarray, k: int, query_block: int, device: str,
                   precision: str = "float32") -> np.ndarray:
    """The k smallest distances from each query to one gallery block, padded with inf when
    the block has fewer than k rows (a Dask task: it holds one block)."""
    _fix_mmap_threshold()  # here too: on a cluster this runs in the worker process
    out = np.full((len(queries), k), np.inf, dtype=np.float32)
    if len(block):
        kk = min(k, len(block))
        # The engine's own gallery blocks (8,192 rows) within the chunk: its distance buffer is
        # queries x 8,192 however large the cache's chunks are.
        # One worker: Dask already runs one such task per core.
        out[:, :kk] = knn_distances(block, queries, k=kk, query_block=query_block, device=device, workers=1,
                                    precision=precision)
    return out


def _merge_nearest(*parts: np.ndarray) -> np.ndarray:
    """The k smallest of several partial results (a node of the merge tree)."""
    k = parts[0].shape[1]
    return np.sort(np.concatenate(parts, axis=1), axis=1)[:, :k]


def knn_distances_dask(gallery, queries: np.ndarray, k: int = 2, query_block: int = 1024,
                       split_every: int = 8, device: str = "cpu", precision: str = "float32") -> np.ndarray:
    """``knn_distances`` over a Dask array gallery, computed out of core.

    One task per block of gallery rows (for a cache, ``FeatureCache.dask_rows``: one per
    chunk) keeps each query's k nearest distances; partial results, (queries x k) each, are
    merged ``split_every`` at a time in a tree. Memory is therefore a few gallery blocks per
    worker thread plus the queries, whatever the gallery's size. The computation runs on the
    active Dask scheduler: a distributed Client if one is open, else Dask's local threads.
    ``precision`` as for ``knn_distances``, chunk by chunk.
    """
    import dask

    _fix_mmap_threshold()
    if gallery.ndim != 2:
        raise PipelineError(f"features must be a 2-D array (samples, dimensions), got shape {gallery.shape}.")
    queries = np.asarray(queries)
    if gallery.shape[1] != queries.shape[1]:
        raise PipelineError(f"gallery features have dimension {gallery.shape[1]} but queries have "
                            f"dimension {queries.shape[1]}.")
    if gallery.shape[0] < k:
        raise PipelineError(f"kNN with k={k} needs at least {k} gallery features, got {gallery.shape[0]}.")
    # Blocks must hold whole rows; a gallery chunked along the features is rechunked.
    blocks = gallery.rechunk({1: -1}).to_delayed().ravel()
    shared = dask.delayed(queries, pure=True)  # one copy in the graph, not one per task
    level = [dask.delayed(_block_nearest, pure=True)(block, shared, k, query_block, str(device), precision)
             for block in blocks]
    while len(level) > 1:
        level = [dask.delayed(_merge_nearest, pure=True)(*level[i:i + split_every])
                 for i in range(0, len(level), split_every)]
    return dask.compute(level[0])[0]


def knn_scores_dask(gallery, queries: np.ndarray, k: int = 2, **kwargs) -> np.ndarray:
    """DN2 score (sum of squared distances to the k nearest) over a Dask array gallery, out of core."""
    return knn_distances_dask(gallery, queries, k=k, **kwargs).sum(axis=1)
