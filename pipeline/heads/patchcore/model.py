"""PatchCore's computations (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
CVPR 2022), as plain functions on tensors: the locally aware patch features (sec. 3.1), the
greedy k-center coreset (sec. 3.2, Algorithm 1) and the reweighted image score (sec. 3.3,
eq. 7). Every nearest-neighbour search goes through the project's engine
(``pipeline.heads.knn.engine``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.knn.engine import (
    _single_threaded_blas,
    knn_certified,
    knn_distances,
)
from pipeline.heads.patches import on_one_grid

# Rows of a gallery block handed to the engine (its own default block).
GALLERY_BLOCK = 8192
# Elements of one block of rows projected at a time for the coreset search: 4M floats, 16 MB.
CORESET_BLOCK_ELEMENTS = 1 << 22


# --- locally aware patch features (sec. 3.1) --------------------------------------------------

def reduce_channels(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """The last axis (C channels) adaptive-average-pooled to ``dim``: output channel i is the
    mean of input channels floor(i C / dim) .. ceil((i + 1) C / dim) - 1, as the authors' code
    reduces its patch vectors. Unchanged when ``dim`` >= C (``layer_vectors`` weighs them)."""
    channels = vectors.shape[-1]
    if dim >= channels:
        return vectors
    flat = vectors.reshape(-1, 1, channels)
    return F.adaptive_avg_pool1d(flat, dim).reshape(*vectors.shape[:-1], dim)


def layer_vectors(vectors: torch.Tensor, share: int) -> torch.Tensor:
    """One layer's part of the patch vectors, (..., C) -> ``share`` channels' worth, as the
    authors' code makes it (each layer pooled to the same number of channels, so that every
    layer weighs the same in the distances, whatever its width): more than ``share`` channels
    are pooled to ``share`` (``reduce_channels``); fewer are kept, scaled by
    sqrt(share / C), which gives the squared distances that repeating each channel share / C
    times (the authors' pooling up) gives, with C channels instead of ``share`` to store and
    search."""
    channels = vectors.shape[-1]
    if share >= channels:
        return vectors * float(np.sqrt(share / channels))
    return reduce_channels(vectors, share)


def layer_share(channels: Sequence[int], dim: int | str) -> int:
    """How many channels' worth each layer gets (``layer_vectors``): ``dim`` shared equally among
    the layers, as the authors' code (1024: 512 each for two layers); ``native``: the widest
    layer's channels (no layer pooled, the narrower ones weighted up to it)."""
    return max(channels) if dim == "native" else max(1, int(dim) // len(channels))


def patch_features(features: Features, layers: Sequence[str], rows: slice | np.ndarray, neighbourhood: int,
                   share: int) -> torch.Tensor:
    """The locally aware patch vectors of ``rows``' images: each layer's map averaged over its
    ``neighbourhood`` x ``neighbourhood`` neighbourhood (stride 1, edges averaged over the
    neighbours there are), brought to the finest grid (bilinear), each layer made ``share``
    channels' worth (``layer_vectors``) and the layers concatenated. (n, H, W, d) float32 on the
    CPU, d = the sum over layers of min(channels, share)."""
    joined = on_one_grid(features, layers, rows, smooth=neighbourhood).permute(0, 2, 3, 1)  # (n, H, W, C)
    widths = [int(np.shape(features.trunk[name])[1]) for name in layers]
    return torch.cat([layer_vectors(part, share) for part in torch.split(joined, widths, dim=-1)], dim=-1).contiguous()


# --- greedy k-center coreset (sec. 3.2) -------------------------------------------------------

def coreset_draws(dim: int, rows: int, projection_dim: int | None, seed: int) -> tuple[torch.Tensor | None, int]:
    """The coreset search's random numbers, from one generator seeded by ``seed``: first the
    projection, (dim, projection_dim) float32 with N(0, 1/projection_dim) entries (squared
    lengths kept on average), or None when ``projection_dim`` is None or no smaller than
    ``dim``; then the first row chosen, uniform among ``rows``."""
    generator = torch.Generator().manual_seed(int(seed))
    matrix = None
    if projection_dim is not None and projection_dim < dim:
        matrix = torch.randn(dim, projection_dim, generator=generator) / float(np.sqrt(projection_dim))
    return matrix, int(torch.randint(rows, (1,), generator=generator))


def project(rows: np.ndarray | torch.Tensor, matrix: torch.Tensor | None,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """``rows`` (n, dim) times ``matrix`` (or as they are, when it is None), float32 on
    ``device``, computed a block of rows at a time."""
    device = resolve_device(device) if isinstance(device, str) else device
    rows = torch.as_tensor(rows)
    if matrix is None:
        return rows.to(device=device, dtype=torch.float32)
    matrix = matrix.to(device)
    out = torch.empty((len(rows), matrix.shape[1]), dtype=torch.float32, device=device)
    block = max(1, CORESET_BLOCK_ELEMENTS // rows.shape[1])
    for start in range(0, len(rows), block):
        torch.matmul(rows[start:start + block].to(device=device, dtype=torch.float32), matrix,
                     out=out[start:start + block])
    return out


def greedy_coreset(rows: np.ndarray | torch.Tensor, count: int, projection_dim: int | None = 128, seed: int = 0,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Indices of ``count`` rows chosen by greedy k-center selection (the paper's Algorithm 1),
    in the order chosen: the first drawn at random, each next one the row farthest (squared
    Euclidean) from those chosen so far; ``coreset_draws(dim, n, projection_dim, seed)`` gives
    the projection the distances are measured on and the first row.

    The projected rows are centred on their mean (distances do not change; the cancellation
    below shrinks with the norms). Each row's squared distance to the chosen set is kept and
    lowered by the newly chosen row c only: |p|^2 - 2 p.c + |c|^2 for all rows is one
    matrix-vector product, a single pass over the rows (measured 6x faster on the CPU than
    forming p - c, which also needs an n x projection_dim temporary). O(n x count x
    projection_dim) operations; memory n x (projection_dim + 3) floats on ``device`` (n x dim
    without a projection), the projection made a block of rows at a time. On a GPU the loop
    never waits for the host. Ties go to the lowest index (``torch.argmax``)."""
    rows = torch.as_tensor(rows)
    n = len(rows)
    if rows.ndim != 2 or not 1 <= count <= n:
        raise PipelineError(f"a coreset of {count} rows cannot be chosen from {n} rows of shape {tuple(rows.shape)}.")
    device = resolve_device(device) if isinstance(device, str) else device
    matrix, start = coreset_draws(rows.shape[1], n, projection_dim, seed)
    points = project(rows, matrix, device)
    points -= points.mean(0, dtype=torch.float64).to(torch.float32)
    norms = (points * points).sum(1)
    if device.type == "cpu":
        return _greedy_on_cpu(points.numpy(), norms.numpy(), count, start)
    nearest = torch.full((n,), float("inf"), dtype=torch.float32, device=device)
    distances = torch.empty(n, dtype=torch.float32, device=device)
    chosen = torch.empty(count, dtype=torch.int64, device=device)
    index = torch.tensor([start], device=device)  # (1,): index_select, never a host read of the index
    for step in range(count):
        chosen[step:step + 1] = index
        torch.addmv(norms, points, points.index_select(0, index)[0], alpha=-2.0, out=distances)
        distances += norms.index_select(0, index)
        torch.minimum(nearest, distances, out=nearest)
        if step + 1 < count:
            index = torch.argmax(nearest).view(1)
    return chosen.cpu().numpy()


def _greedy_on_cpu(points: np.ndarray, norms: np.ndarray, count: int, start: int) -> np.ndarray:
    """``greedy_coreset``'s loop on the CPU, in NumPy on one thread (a single-threaded BLAS as the
    engine's, ``_single_threaded_blas``): each step is a matrix-vector product and a few passes
    over n floats, bound by memory, where torch's thread pool costs more in waking its threads
    than the work (measured on 2 busy cores: 3.5 ms per elementwise pass over 47,040 floats
    against tens of microseconds in NumPy)."""
    nearest = np.full(len(points), np.inf, dtype=np.float32)
    distances = np.empty(len(points), dtype=np.float32)
    chosen = np.empty(count, dtype=np.int64)
    index = start
    _single_threaded_blas(+1)
    try:
        for step in range(count):
            chosen[step] = index
            np.dot(points, points[index], out=distances)
            distances *= -2.0
            distances += norms
            distances += norms[index]
            np.minimum(nearest, distances, out=nearest)
            index = int(np.argmax(nearest))
    finally:
        _single_threaded_blas(-1)
    return chosen


def coreset_size(rows: int, fraction: float) -> int:
    """How many of ``rows`` patches a coreset of ``fraction`` keeps: floor(fraction x rows), at
    least 1 (the authors' code takes the floor)."""
    return max(1, min(rows, int(fraction * rows)))


# --- scores (sec. 3.3) ------------------------------------------------------------------------

class Bank:
    """The memory bank as the engine reads it, possibly less one contiguous range of its rows
    (``skip``: one training image's patches, for leave-one-image-out scores). ``rows()`` is a
    fresh gallery for each search (a tensor, or an iterable of blocks that copies nothing);
    ``original(i)`` maps positions in that gallery back to rows of the whole bank."""

    def __init__(self, bank: torch.Tensor, skip: tuple[int, int] | None = None) -> None:
        self.bank, self.skip = bank, skip
        if skip is not None and skip[1] - skip[0] >= len(bank):
            raise PipelineError("leave-one-image-out scores need bank rows from another training image; the memory "
                                "bank holds one image's patches only (fit on at least 2 images).")

    def __len__(self) -> int:
        return len(self.bank) - (0 if self.skip is None else self.skip[1] - self.skip[0])

    def rows(self) -> torch.Tensor | Iterable[torch.Tensor]:
        if self.skip is None:
            return self.bank
        return self._blocks()

    def _blocks(self) -> Iterator[torch.Tensor]:
        first, stop = self.skip
        for lo, hi in ((0, first), (stop, len(self.bank))):
            for start in range(lo, hi, GALLERY_BLOCK):
                yield self.bank[start:min(start + GALLERY_BLOCK, hi)]

    def original(self, positions: np.ndarray) -> np.ndarray:
        if self.skip is None:
            return positions
        return np.where(positions >= self.skip[0], positions + (self.skip[1] - self.skip[0]), positions)


def nearest_distances(bank: Bank, queries: torch.Tensor, device: str | torch.device = "cpu",
                      precision: str = "float32") -> np.ndarray:
    """The Euclidean distance of every query to its nearest bank vector (the patch scores),
    float64: the square root of the engine's squared distance."""
    squared = knn_distances(bank.rows(), queries, k=1, gallery_block=GALLERY_BLOCK, device=device,
                            precision=precision)[:, 0]
    return np.sqrt(squared.astype(np.float64))


def reweighting(bank: Bank, tests: torch.Tensor, neighbours: int, device: str | torch.device = "cpu") -> np.ndarray:
    """The weights of eq. 7 for each image's most anomalous test patch m_test* (rows of
    ``tests``): with m* its nearest bank vector and N_b(m*) the b = ``neighbours`` nearest bank
    vectors of m* (m* itself first, at distance 0; all of them when the bank has fewer),

        w = 1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||,

    computed as 1 - exp(||m_test* - m*|| - logsumexp_m ||m_test* - m||) from float64 distances,
    so no exponential overflows. The image score is w times s*. Neighbours are found exactly
    (``knn_certified``); exact duplicates of m* in the bank are interchangeable with it."""
    b = min(neighbours, len(bank))
    nearest = bank.original(knn_certified(bank.rows(), tests, k=1, gallery_block=GALLERY_BLOCK,
                                          device=device).indices[:, 0])
    centres = bank.bank[torch.as_tensor(nearest, device=bank.bank.device)]
    support = bank.original(knn_certified(bank.rows(), centres, k=b, gallery_block=GALLERY_BLOCK,
                                          device=device).indices)
    tests64 = torch.as_tensor(tests).to(torch.float64).cpu()
    support_rows = bank.bank[torch.as_tensor(support, device=bank.bank.device)].to(torch.float64).cpu()
    distances = torch.linalg.vector_norm(support_rows - tests64[:, None, :], dim=2)  # (n, b)
    own = torch.linalg.vector_norm(centres.to(torch.float64).cpu() - tests64, dim=1)  # (n,)
    return (1.0 - torch.exp(own - torch.logsumexp(distances, dim=1))).numpy()


def image_scores(bank: Bank, patches: torch.Tensor, neighbours: int | None, device: str | torch.device = "cpu",
                 precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Patch scores (n, P) and image scores (n,) of n images' patch vectors (n, P, dim), float64:
    each patch's distance to its nearest bank vector, and the largest of them per image, times
    the weight of eq. 7 unless ``neighbours`` is 0 or None (then the largest alone)."""
    n, count, dim = patches.shape
    scores = nearest_distances(bank, patches.reshape(n * count, dim), device, precision).reshape(n, count)
    worst = scores.argmax(axis=1)
    top = scores[np.arange(n), worst]
    if not neighbours:
        return scores, top
    weights = reweighting(bank, patches[torch.arange(n), torch.as_tensor(worst)], neighbours, device)
    return scores, weights * top
