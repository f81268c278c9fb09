"""AnoMem's torch modules and losses (AnoMem paper, section 3), on frozen features.

Every scale is a set of feature vectors per image: the intermediate map as its g x g
positions ("the image as patches", section 3.1), the last scale as the one pooled vector.
So a scale's data is (N, P, C) and everything below works on the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """The trainable part that replaces the paper's encoder stage: standardise the frozen
    feature with training statistics, then a 2-layer MLP (SimCLR's projection head)."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def set_statistics(self, features: torch.Tensor) -> None:
        flat = features.reshape(-1, features.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class HopfieldMemory(nn.Module):
    """Modern Hopfield layer with a learnable memory (eq. 1): ``xi <- softmax(beta xi X) X^T``.

    ``patterns`` is X^T, one stored pattern per row (slots x dim). ``steps`` update steps:
    one retrieval step is what the paper's layer does per forward pass.
    """

    def __init__(self, slots: int, dim: int, beta: float = 2.0, steps: int = 1) -> None:
        super().__init__()
        self.beta, self.steps = beta, steps
        self.patterns = nn.Parameter(torch.randn(slots, dim) / dim ** 0.5)

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            xi = torch.softmax(self.beta * xi @ self.patterns.T, dim=-1) @ self.patterns
        return xi


def memorise(z: torch.Tensor, is_normal: torch.Tensor, memory: nn.Module) -> torch.Tensor:
    """Eq. 3: ``Mem(z, y) = y HF(z) + (1 - y) z``; the memory sees normal samples only."""
    y = is_normal.to(z.dtype).reshape(-1, *([1] * (z.dim() - 1)))
    return y * memory(z) + (1 - y) * z


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4-5 for one batch of pairs (a_k, b_k), both directions averaged: SimCLR's NT-Xent
    with cosine similarity over the 2B representations, the positive being the other view."""
    n = a.shape[0]
    reps = F.normalize(torch.cat([a, b]), dim=-1)
    logits = reps @ reps.T / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=a.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(logits, target)


def variance_loss(retrieved: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 6: minus the standard deviation of the retrieved normal samples.

    The paper's Var[Mem(z_k)] is read as the variance over the batch, per dimension (as in
    VICReg), averaged over dimensions: that is what goes to zero when every prototype
    collapses to one point, which is what the loss is there to stop.
    """
    if retrieved.shape[0] < 2:
        return retrieved.new_zeros(())
    return -torch.sqrt(retrieved.var(dim=0) + eps).mean()


def double_hinge(distance: torch.Tensor, is_normal: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 11, averaged: normal samples inside the ball of radius 1/M, anomalies beyond M."""
    y = is_normal.to(distance.dtype)
    return (y * F.relu(distance - 1 / margin) + (1 - y) * F.relu(margin - distance)).mean()


class ScaleClassifier(nn.Module):
    """Stage B, semi-supervised: average pooling of the difference map to ``pool`` x ``pool``
    positions, then a 2-layer MLP with one output, the scale's anomaly distance (eq. 10)."""

    def __init__(self, dim: int, positions: int, pool: int = 1, hidden: int = 128) -> None:
        super().__init__()
        self.grid = int(round(positions ** 0.5))
        if self.grid * self.grid != positions:
            raise ValueError(f"{positions} positions are not a square grid")
        self.pool = min(pool, self.grid)
        self.mlp = nn.Sequential(nn.Linear(dim * self.pool * self.pool, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        n, p, d = delta.shape
        square = delta.transpose(1, 2).reshape(n, d, self.grid, self.grid)
        pooled = F.adaptive_avg_pool2d(square, self.pool).reshape(n, -1)
        return self.mlp(pooled).squeeze(-1)
