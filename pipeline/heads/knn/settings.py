"""The kNN head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``knn`` section and the report's words all come from here."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import param
from pipeline.heads.settings import TorchHeadParams

# float32: blocked float32 products; bfloat16: a bfloat16 screen with a certificate, the same
# neighbours (pipeline/heads/knn/reduced.py).
PRECISIONS = ("float32", "bfloat16")


@dataclass(eq=False, repr=False, kw_only=True)
class KNNParams(TorchHeadParams):
    k: int = param(2, "Number of nearest normal training features whose squared distances are summed.",
                   low=1, high=10_000, paper=2, report="k = {}")
    precision: str = param(
        "float32", "float32: blocked float32 matrix products. bfloat16: the same k nearest, exactly, found faster "
                   "where bfloat16 products are (CPUs with AVX512-BF16 or AMX, GPUs): a bfloat16 screen keeps a few "
                   "candidates per image with an error bound proving the k nearest are among them, their distances "
                   "are computed in float64, and images it cannot certify are searched again exactly. -v prints "
                   "the fraction certified at once. The leave-one-out training scores are float32.",
        choices=PRECISIONS)


PARAMS = KNNParams
