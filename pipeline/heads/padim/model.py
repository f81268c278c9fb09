"""PaDiM's statistics: one multivariate Gaussian per grid position, in float64, every heavy step
batched over the positions (torch's batched matrix products, Cholesky factorisations and
triangular solves: no Python loop over positions).

Embeddings travel position-major, ``(P, n, d)``: P = H*W grid positions, n images, d channels.

    mean, count = position_means(blocks())                 # pass 1 over the training images
    scatter, fourth = position_scatter(blocks(), mean)     # pass 2: centred sums, exact
    covariance = regularised_covariance(scatter, count, epsilon)   # or ledoit_wolf_covariance
    whitening = whitening_factors(covariance)              # (P, d, d): L^-1, L the Cholesky factor
    distances = mahalanobis(block, mean, whitening)        # (P, n): the distance, not its square

Two passes (the mean first, then sums of centred products) rather than one pass of raw sums:
the one-pass formula ``sum x x^T - n m m^T`` cancels catastrophically where a channel's mean is
large against its spread, and the training maps are read cheaply twice.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from pipeline.errors import PipelineError

ALL = "all"
# Float64 embeddings of one block of images (and their centred copy) kept under about this.
BLOCK_BYTES = 128 * 2**20


def choose_channels(available: int, channels: int | str, seed: int) -> np.ndarray:
    """The indices of the channels kept, sorted: ``channels`` of ``available`` drawn without
    replacement from ``seed`` (numpy's default_rng: the same on every platform), or all of them
    when ``channels`` is ``"all"`` or at least ``available``."""
    if channels == ALL or int(channels) >= available:
        return np.arange(available, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(available, size=int(channels), replace=False)
    return np.sort(chosen).astype(np.int64)


def images_per_block(positions: int, dims: int, channels_in: int, budget: int = BLOCK_BYTES) -> int:
    """How many images one block holds: their float64 embeddings twice (the block and its
    centred or whitened copy) and the float32 maps they are cut from, within ``budget`` bytes."""
    per_image = positions * (2 * dims * 8 + channels_in * 4)
    return max(1, budget // max(1, per_image))


def position_means(blocks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The mean embedding at each position, (P, d) float64, and the number of images, from
    blocks of (P, n, d) embeddings."""
    total, count = None, 0
    for block in blocks:
        block = block.to(torch.float64)
        total = block.sum(dim=1) if total is None else total + block.sum(dim=1)
        count += block.shape[1]
    if total is None:
        raise PipelineError("PaDiM needs training images; got none.")
    return total / count, count


def position_scatter(blocks: Iterable[torch.Tensor], mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the images at each position of the centred outer products, (P, d, d), and of
    the centred embeddings' squared norms squared, (P,) (Ledoit-Wolf's fourth moments)."""
    positions, dims = mean.shape
    scatter = torch.zeros(positions, dims, dims, dtype=torch.float64)
    fourth = torch.zeros(positions, dtype=torch.float64)
    for block in blocks:
        centred = block.to(torch.float64) - mean.unsqueeze(1)
        scatter.baddbmm_(centred.transpose(1, 2), centred)
        fourth += centred.square().sum(dim=2).square().sum(dim=1)
    # The product is symmetric up to rounding; the Cholesky factorisation reads one triangle.
    return (scatter + scatter.transpose(1, 2)) / 2, fourth


def _add_to_diagonal(matrices: torch.Tensor, values: torch.Tensor | float) -> torch.Tensor:
    matrices.diagonal(dim1=-2, dim2=-1).add_(values if isinstance(values, float) else values.unsqueeze(-1))
    return matrices


def regularised_covariance(scatter: torch.Tensor, count: int, epsilon: float) -> torch.Tensor:
    """The paper's: the empirical covariance normalised by N - 1 (numpy's ``np.cov``, as the
    authors' code), plus ``epsilon`` I, at each position: (P, d, d)."""
    if count < 2:
        raise PipelineError(f"a covariance needs at least 2 training images, got {count}.")
    return _add_to_diagonal(scatter / (count - 1), float(epsilon))


def ledoit_wolf_covariance(scatter: torch.Tensor, fourth: torch.Tensor, count: int,
                           epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's ``ledoit_wolf`` (``assume_centered=False``) at every position at once,
    plus ``epsilon`` I: the covariance normalised by N shrunk towards mu I (mu its mean
    variance) by the Ledoit-Wolf shrinkage, from the centred sums of ``position_scatter``.
    Returns the covariances (P, d, d) and the shrinkage of each position (P,).

    scikit-learn's shrinkage, written with the centred rows x_k (k = 1..N) of one position:
    beta_ = sum_k ||x_k||^4 (its sum of <X2^T, X2>), delta_ = ||X^T X||_F^2 / N^2, and
    ``sum(emp_cov_trace)`` = trace(X^T X) / N."""
    if count < 2:
        raise PipelineError(f"a covariance needs at least 2 training images, got {count}.")
    dims = scatter.shape[-1]
    empirical = scatter / count
    trace = empirical.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    mu = trace / dims
    delta_ = scatter.square().sum(dim=(-2, -1)) / count**2
    beta = (fourth / count - delta_) / (dims * count)
    delta = (delta_ - 2.0 * mu * trace + dims * mu.square()) / dims
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(beta == 0, torch.zeros_like(beta), beta / torch.where(delta == 0, 1.0, delta))
    if dims == 1:  # scikit-learn: one feature, no shrinkage
        shrinkage = torch.zeros_like(shrinkage)
    shrunk = empirical * (1.0 - shrinkage).view(-1, 1, 1)
    _add_to_diagonal(shrunk, shrinkage * mu)
    return _add_to_diagonal(shrunk, float(epsilon)), shrinkage


def whitening_factors(covariance: torch.Tensor) -> torch.Tensor:
    """The inverse W = L^-1 of the lower Cholesky factor L of every position's covariance
    (covariance = L L^T, so its inverse is W^T W): (P, d, d) float64, lower triangular, from one
    batched Cholesky factorisation and one batched triangular solve against I. A PipelineError
    says how many positions fail when some covariances are not positive definite.

    Kept rather than L because scoring then is one batched product, several times faster on a
    CPU than a batched triangular solve per block of images, and as exact for these
    covariances (their conditioning is bounded by the added epsilon)."""
    factors, info = torch.linalg.cholesky_ex(covariance)
    failed = int((info != 0).sum())
    if failed or not torch.isfinite(factors).all():
        raise PipelineError(f"the covariance is not positive definite at {failed or 'some'} of {len(covariance)} grid "
                            f"positions (constant or non-finite features, or fewer training images than channels "
                            f"with epsilon 0): raise epsilon.")
    identity = torch.eye(covariance.shape[-1], dtype=factors.dtype).expand_as(factors).contiguous()
    return torch.linalg.solve_triangular(factors, identity, upper=False)


def mahalanobis(embeddings: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """The Mahalanobis distance (not its square, as the paper's M(x_ij)) of each embedding to
    its position's Gaussian: ``sqrt((x - mu)^T S^-1 (x - mu)) = ||W (x - mu)||`` with W = L^-1
    (``whitening_factors``), one batched product. (P, n, d) -> (P, n) float64."""
    centred = embeddings.to(torch.float64) - mean.unsqueeze(1)
    whitened = torch.bmm(centred, whitening.transpose(1, 2))  # rows (W (x - mu))^T
    return whitened.square().sum(dim=2).sqrt()
