"""The PatchCore head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``patchcore`` section and the report's words all come from
here. ``paper=`` holds the values of Roth et al. (CVPR 2022) and of their code (the 1024-d
patch vectors, the 128-d projection of the coreset search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.declare import param
from pipeline.heads.knn.settings import PRECISIONS
from pipeline.heads.settings import SeedsParams, TorchHeadParams

# How a saved head keeps its memory bank (``head.save(path, bank_dtype=...)``).
BANK_DTYPES = ("float32", "float16")


@dataclass(eq=False, repr=False, kw_only=True)
class PatchCoreParams(TorchHeadParams):
    layers: Any = param(None, "The cache's full-resolution maps (stages) whose patches are compared, brought to the "
                              "finest one's grid (bilinear) and concatenated; none: all the cache holds (extract "
                              "--patch-maps).", kind="names", none_word="none", report="layers {}",
                        report_skip=None)
    neighbourhood: int = param(3, "p: each map is averaged over its p x p neighbourhood (stride 1, an odd p) before "
                                  "the layers are joined: the locally aware patch features (sec. 3.1); 1: none.",
                               low=1, high=15, paper=3, report="p = {}")
    dim: int | str = param(1024, "Size of the patch vectors, shared equally among the layers as the authors' code "
                                 "does (1024: 512 channels' worth each for two): a wider layer is adaptive-average-"
                                 "pooled to its share, a narrower one kept whole and weighted as if its channels "
                                 "were repeated up to it, so every layer weighs the same in the distances; native: "
                                 "each layer whole, weighted up to the widest.",
                           kind="int", low=1, words=("native",), paper=1024, report="D = {}")
    coreset_fraction: float = param(
        0.1, "Fraction of all training patches kept in the memory bank by greedy k-center coreset selection (sec. "
             "3.2; the paper's PatchCore-25%, -10% and -1%); 1: every patch, no coreset.",
        low=0, low_open=True, high=1, paper=0.1, report="coreset {}")
    projection_dim: int | None = param(
        128, "The coreset search measures distances on a random Gaussian projection of the patch vectors to this "
             "many dimensions (Johnson-Lindenstrauss); none: on the vectors themselves (so too when they have no "
             "more dimensions than this).", low=1, none_word="none", paper=128)
    reweight_neighbours: int | None = param(
        9, "b of the image score's reweighting (eq. 7): the largest patch score s* is multiplied by 1 - softmax of "
           "the test patch's distances to its nearest bank vector m* and to m*'s other b - 1 nearest bank vectors "
           "(N_b(m*) counts m* itself); 0 or none: the image score is s* alone. 1 is refused (the weight would be 0).",
        low=0, none_word="none", report="b = {}", report_skip=0)
    precision: str = param(
        "float32", "Nearest-neighbour search of the patches (pipeline/heads/knn): float32, blocked float32 matrix "
                   "products; bfloat16, the same nearest bank vectors, exactly, from a certified bfloat16 screen "
                   "(faster on GPUs and CPUs with bfloat16 products).", choices=PRECISIONS)
    seed: int = param(0, "Seed of the coreset search: its random projection and its first patch (set by the "
                         "evaluation, one per run).", low=0, config=False)


PARAMS = PatchCoreParams
RUN = SeedsParams
