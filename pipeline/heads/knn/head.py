"""DN2 / PANDA kNN head (PANDA paper, section 2.2): score = sum of squared L2 distances to
the k nearest normal training features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.heads.knn.engine import knn_scores, knn_scores_dask


# A gallery too large for memory is given as a function returning an iterable of row
# blocks (for example FeatureCache.iter_rows), read again at every score call, or as a Dask
# array (for example FeatureCache.dask_rows), scored by a Dask computation over its blocks.
GallerySource = Callable[[], Iterable[np.ndarray]]


def _is_dask(value: object) -> bool:
    # Without importing dask for every head: a Dask collection has a task graph.
    return hasattr(value, "__dask_graph__")


@dataclass
class KNNHead:
    k: int = 2
    device: str = "cpu"
    gallery: np.ndarray | GallerySource | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PipelineError(f"k must be at least 1, got {self.k}.")

    def fit(self, train_features: np.ndarray | GallerySource | Any) -> "KNNHead":
        """Keep the gallery: an array, a GallerySource, or a Dask array (Any: dask is optional here)."""
        if _is_dask(train_features):
            self.gallery = train_features  # scored out of core, block by block (knn_scores_dask)
            return self
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
        if _is_dask(self.gallery):
            return knn_scores_dask(self.gallery, test_features, k=self.k, device=self.device)
        gallery = self.gallery() if callable(self.gallery) else self.gallery
        return knn_scores(gallery, test_features, k=self.k, device=self.device)

    # -- saving (pipeline.saved_heads) -----------------------------------------------------

    def gallery_array(self) -> np.ndarray:
        """The gallery in memory: a streamed or Dask gallery is read once (to be saved)."""
        if self.gallery is None:
            raise RuntimeError("fit the head before saving it")
        if _is_dask(self.gallery):
            return np.asarray(self.gallery.compute(), dtype=np.float32)
        if callable(self.gallery):
            return np.concatenate([np.asarray(block, dtype=np.float32) for block in self.gallery()])
        return self.gallery

    def to_state(self, gallery_dtype: str = "float16") -> dict:
        """k and the gallery, which is everything kNN learns. float16 halves the file; its
        rounding (3 significant digits) moves scores far less than they differ between images."""
        if gallery_dtype not in ("float16", "float32"):
            raise PipelineError(f"a kNN gallery is saved as float16 or float32, not {gallery_dtype!r}.")
        gallery = self.gallery_array()
        return {"k": self.k, "feature_dim": int(gallery.shape[1]),
                "gallery": torch.from_numpy(np.ascontiguousarray(gallery, dtype=gallery_dtype))}

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> "KNNHead":
        gallery = torch.as_tensor(state["gallery"]).to(torch.float32).numpy()
        return cls(k=int(state["k"]), device=device).fit(gallery)
