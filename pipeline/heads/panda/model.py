"""PANDA's losses and the tail's passes (PANDA paper, section 3; the authors' code,
talreiss/PANDA, ``losses.py`` and ``panda.py``), on cached trunk maps instead of images.

Plain functions; the training loop lives in ``pipeline.heads.panda.head``. ``tail`` is a copy
of the backbone's later stages (``FeatureExtractor.split``): a trunk map (N, C, H, W) -> the
pooled feature (N, D).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Trunk maps per forward pass when only features are wanted (no gradients are kept).
EMBED_BATCH = 256


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Autocast to bfloat16 for ``precision="bfloat16"``, a no-op for float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def tail_input(maps: torch.Tensor) -> torch.Tensor:
    """Cached float16 trunk maps as the tail's input: float32, channels-last, as the extraction
    ran the backbone (``pipeline.extract.loop``)."""
    return maps.float().contiguous(memory_format=torch.channels_last)


def compactness_loss(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Eq. 1 as the authors' code computes it (``CompactnessLoss``): the batch mean of
    ``||psi(x) - c||^2 / D``, i.e. the mean of the squared differences over the batch and the
    D dimensions (the paper writes the sum over dimensions; the 1/D only rescales it)."""
    return (features.float() - centre).square().mean()


def ewc_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], fisher: Sequence[torch.Tensor],
                weight: float) -> torch.Tensor:
    """Eq. 4's regulariser as the authors' ``EWCLoss``: ``weight * sum_i F_i (theta_i -
    theta*_i)^2 / 2`` over the trained weights, ``anchors`` the pretrained ones."""
    total = sum((f * (p - a).square()).sum() for p, a, f in zip(params, anchors, fisher))
    return weight * total / 2


def uniform_fisher(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """F = 1 for every weight (the paper: "achieves similar results to early stopping")."""
    return [torch.ones_like(p) for p in params]


def classifier_fisher(tail: nn.Module, classifier: nn.Module, maps: torch.Tensor, batches: Sequence[torch.Tensor],
                      precision: str = "float32") -> list[torch.Tensor]:
    """Eq. 3's diagonal Fisher of the pretraining task, on the given minibatches of trunk maps:
    the mean over minibatches of the squared gradient, with respect to the tail's weights, of
    the pretrained classifier's cross-entropy against its own top-1 predictions (no labels are
    needed, so it can be computed on the normal class's training images). The tail is left as
    it was (eval mode, gradients cleared)."""
    params = [p for p in tail.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    device = maps.device
    for index in batches:
        with autocast(device, precision):
            logits = classifier(tail(tail_input(maps[index]))).float()
        loss = F.cross_entropy(logits, logits.detach().argmax(dim=1))
        for f, g in zip(fisher, torch.autograd.grad(loss, params)):
            f += g.detach().float().square()
    return [f / max(len(batches), 1) for f in fisher]


def train_step(tail: nn.Module, params: Sequence[torch.Tensor], optimiser: torch.optim.Optimizer, maps: torch.Tensor,
               centre: torch.Tensor, grad_clip: float, precision: str = "float32",
               ewc: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], float] | None = None) -> dict[str, float]:
    """One SGD step of the authors' ``run_epoch`` on a minibatch of trunk maps: the compactness
    loss (plus ``ewc_penalty(params, *ewc)`` when ``ewc`` = (anchors, fisher, weight) is given),
    backward, the gradient norm clipped at ``grad_clip``, the step. Returns the loss terms."""
    with autocast(maps.device, precision):
        adapted = tail(tail_input(maps))
    compact = compactness_loss(adapted, centre)
    terms = {"compactness": compact}
    if ewc is not None:
        terms["ewc"] = ewc_penalty(params, *ewc)
    loss = sum(terms.values())
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimiser.step()
    return {"loss": float(loss.detach()), **{name: float(value.detach()) for name, value in terms.items()}}


@torch.no_grad()
def embed(tail: nn.Module, maps: torch.Tensor, precision: str = "float32", batch_size: int = EMBED_BATCH) -> torch.Tensor:
    """The tail's pooled features (N, D), float32, of trunk maps (N, C, H, W) on the tail's device."""
    device = next(tail.parameters()).device
    parts = []
    for start in range(0, len(maps), batch_size):
        block = maps[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device, precision):
            parts.append(tail(tail_input(block)).float())
    return torch.cat(parts) if parts else torch.zeros(0, 0, device=device)
