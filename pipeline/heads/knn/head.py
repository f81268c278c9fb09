"""DN2 / PANDA kNN head (PANDA paper, section 2.2): score = sum of squared L2 distances to
the k nearest normal training features.

``precision="bfloat16"`` finds the same k nearest with a certified bfloat16 screen
(pipeline/heads/knn/reduced.py), faster on CPUs with AVX512-BF16 or AMX and on GPUs; the
fraction of test images it certified at once is the head's ``diagnostics``."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.knn.settings import KNNParams
from pipeline.heads.knn.engine import Neighbours, knn_certified, knn_loo_scores, knn_scores, knn_scores_dask


# A gallery too large for memory is given as a function returning an iterable of row
# blocks (for example FeatureCache.iter_rows), read again at every score call, or as a Dask
# array (for example FeatureCache.dask_rows), scored by a Dask computation over its blocks.
GallerySource = Callable[[], Iterable[np.ndarray]]


def _is_dask(value: object) -> bool:
    # Without importing dask for every head: a Dask collection has a task graph.
    return hasattr(value, "__dask_graph__")


@dataclass(eq=False, repr=False, kw_only=True)
class KNNHead(KNNParams, Head):
    """Keeps the normal training features (the gallery); scores by the k nearest of them.
    Its parameters are declared in ``settings.py``."""

    name = "knn"
    training_note = "leave-one-out kNN scores of the training features (each against the other training features)"

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        """Keep the gallery: an array, a GallerySource, or a Dask array (Any: dask is optional here)."""
        gallery = features.pooled
        if _is_dask(gallery) or callable(gallery):
            self.gallery_ = gallery  # scored block by block (knn_distances checks there are k rows)
            return
        if len(gallery) < self.k:
            raise PipelineError(f"the normal class has {len(gallery)} training features, fewer than "
                                f"k = {self.k}; lower k or use a class with more images.")
        self.gallery_ = np.asarray(gallery, dtype=np.float32)

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        if not hasattr(self, "gallery_"):
            raise PipelineError("fit the kNN head before scoring")
        test = Features.of(features).pooled
        if _is_dask(self.gallery_):
            # Chunk by chunk; the certificate's figures are not gathered from the chunk tasks.
            scores = knn_scores_dask(self.gallery_, test, k=self.k, device=self.device, precision=self.precision)
        elif self.precision == "float32":
            gallery = self.gallery_() if callable(self.gallery_) else self.gallery_
            scores = knn_scores(gallery, test, k=self.k, device=self.device)
        else:
            scores = self._certified(test).distances.sum(axis=1)
        return np.asarray(scores, dtype=np.float64)

    def _certified(self, test: np.ndarray) -> Neighbours:
        """The certified search of these test rows, remembered (weakly) for ``diagnostics``."""
        gallery = self.gallery_() if callable(self.gallery_) else self.gallery_
        found = knn_certified(gallery, test, k=self.k, device=self.device)
        self._last_search = (weakref.ref(test), found)
        return found

    def diagnostics(self, features: Features | np.ndarray | Any) -> dict[str, float]:
        """With precision bfloat16, ``certified_fraction``: the fraction of these images whose
        k nearest the bfloat16 screen certified (the others were found by slower exact passes;
        every score is exact). From the last ``score_samples`` of these very rows, if any."""
        if self.precision == "float32" or _is_dask(self.gallery_):
            return {}
        test = Features.of(features).pooled
        last, found = getattr(self, "_last_search", (None, None))
        if last is None or last() is not test:
            found = self._certified(test)
        return {"certified_fraction": found.certified_fraction}

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_last_search", None)  # a weak reference (not picklable) and what it found
        return state

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Leave-one-out: each gallery row against the others (against all, each would score ~0)."""
        return np.asarray(knn_loo_scores(self.gallery_array(), k=self.k, device=self.device), dtype=np.float64)

    # -- saving (pipeline.heads.saving) ----------------------------------------------------

    def gallery_array(self) -> np.ndarray:
        """The gallery in memory: a streamed or Dask gallery is read once (to be saved)."""
        if not hasattr(self, "gallery_"):
            raise PipelineError("fit the kNN head before saving it")
        if _is_dask(self.gallery_):
            return np.asarray(self.gallery_.compute(), dtype=np.float32)
        if callable(self.gallery_):
            return np.concatenate([np.asarray(block, dtype=np.float32) for block in self.gallery_()])
        return self.gallery_

    def _state(self, gallery_dtype: str = "float16") -> dict:
        """k and the gallery, which is everything kNN learns. float16 halves the file; its
        rounding (3 significant digits) moves scores far less than they differ between images."""
        if gallery_dtype not in ("float16", "float32"):
            raise PipelineError(f"a kNN gallery is saved as float16 or float32, not {gallery_dtype!r}.")
        gallery = self.gallery_array()
        return {"k": self.k, "feature_dim": int(gallery.shape[1]), "precision": self.precision,
                "gallery": torch.from_numpy(np.ascontiguousarray(gallery, dtype=gallery_dtype))}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "KNNHead":
        head = cls(k=int(state["k"]), device=device, precision=state.get("precision", "float32"))
        head.gallery_ = torch.as_tensor(state["gallery"]).to(torch.float32).numpy()
        return head


HEAD = KNNHead
