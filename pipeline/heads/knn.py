"""DN2 / PANDA kNN head (PANDA paper, section 2.2): score = sum of squared L2 distances to
the k nearest normal training features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.knn import knn_scores


# A gallery too large for memory is given as a function returning an iterable of row
# blocks (for example FeatureCache.iter_rows), read again at every score call.
GallerySource = Callable[[], Iterable[np.ndarray]]


@dataclass
class KNNHead:
    k: int = 2
    device: str = "cpu"
    gallery: np.ndarray | GallerySource | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PipelineError(f"k must be at least 1, got {self.k}.")

    def fit(self, train_features: np.ndarray | GallerySource) -> "KNNHead":
        if callable(train_features):
            self.gallery = train_features  # knn_distances checks there are at least k rows
            return self
        if len(train_features) < self.k:
            raise PipelineError(f"the normal class has {len(train_features)} training features, fewer than "
                                f"k = {self.k}; lower k or use a class with more images.")
        self.gallery = np.asarray(train_features, dtype=np.float32)
        return self

    def score(self, test_features: np.ndarray) -> np.ndarray:
        if self.gallery is None:
            raise RuntimeError("fit the head before scoring")
        gallery = self.gallery() if callable(self.gallery) else self.gallery
        return knn_scores(gallery, test_features, k=self.k, device=self.device)
