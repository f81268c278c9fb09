"""DN2 / PANDA kNN head (PANDA paper, section 2.2): score = sum of squared L2 distances to
the k nearest normal training features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError
from pipeline.knn import knn_scores


@dataclass
class KNNHead:
    k: int = 2
    device: str = "cpu"
    gallery: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PipelineError(f"k must be at least 1, got {self.k}.")

    def fit(self, train_features: np.ndarray) -> "KNNHead":
        if len(train_features) < self.k:
            raise PipelineError(f"the normal class has {len(train_features)} training features, fewer than "
                                f"k = {self.k}; lower k or use a class with more images.")
        self.gallery = np.asarray(train_features, dtype=np.float32)
        return self

    def score(self, test_features: np.ndarray) -> np.ndarray:
        if self.gallery is None:
            raise RuntimeError("fit the head before scoring")
        return knn_scores(self.gallery, test_features, k=self.k, device=self.device)
