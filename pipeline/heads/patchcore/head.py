"""PatchCore head (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR
2022) on the cache's full-resolution maps (``Features.trunk``, extract --patch-maps).

- Patch vectors (sec. 3.1, ``model.patch_features``): each layer's map averaged over p x p
  neighbourhoods (p = 3, stride 1), the layers brought to the finest grid (bilinear), each made
  ``dim`` / layers channels' worth and concatenated, as the authors' code (which pools each layer
  to 1024 channels, stacks them and pools the stack to 1024: 512 per layer for two), so that
  every layer weighs the same in the distances whatever its width. A layer with fewer channels
  than its share is kept whole and weighted as the authors' pooling up repeats its channels
  (``model.layer_vectors``): EfficientNet-Lite0's 40 + 112 channels stay 152-d vectors.
- Memory bank (sec. 3.2): the patch vectors of all training images, N x H x W rows, reduced to
  ``coreset_fraction`` of them by greedy k-center selection on a 128-d random projection
  (``model.greedy_coreset``). Before the coreset the rows are held in memory at once:
  N x H x W x dim x 4 bytes (200 images at 28 x 28 patches of 1024: 642 MB; of 152: 95 MB),
  plus their projection, N x H x W x 128 x 4 bytes, on ``device``.
- Scores (sec. 3.3): a patch's score is its Euclidean distance to the nearest bank vector; the
  image's is the largest, reweighted by eq. 7 (``model.reweighting``; b = 9 bank neighbours).
  The authors' released code takes the largest patch score alone: ``reweight_neighbours=0``.
  Images are scored a block at a time (``PATCHES_PER_BLOCK`` patches: 20 images at 28 x 28).
- Anomaly maps: the grid of patch scores, upsampled to the input and smoothed by a Gaussian of
  sigma 4 (``pipeline.heads.patches.upsample_and_smooth``).

Threshold reference (``training_scores``): a training image scored against the bank scores
about 0, since its own patches (or their coreset representatives) are in it. Each training
image is therefore scored against the bank less the rows that came from that image
(leave-one-image-out). The coreset was chosen with the image present, so the bank lacks the
rows a coreset without it would have taken in its place: these scores run, if anything, a
little higher than those of new normal images would, a conservative threshold. It costs one
scoring pass over the training images (the bank's rows are skipped, never copied).

A saved head holds the bank (float32, or float16 with ``save(..., bank_dtype="float16")``),
which training image each row came from (for the threshold) and the layers, grid and
parameters: coreset rows x dim x 4 bytes (20 images at 28 x 28 x 152, 10%: 0.95 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from pipeline.declare import specs
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.patchcore.model import (
    Bank,
    coreset_size,
    greedy_coreset,
    image_scores,
    layer_share,
    patch_features,
)
from pipeline.heads.patchcore.settings import BANK_DTYPES, PatchCoreParams
from pipeline.heads.patches import patch_layers, row_blocks, upsample_and_smooth

# Patches scored (or put in the bank) per block of images: 20 images at 28 x 28.
PATCHES_PER_BLOCK = 1 << 14
WHO = "PatchCore"


@dataclass(eq=False, repr=False, kw_only=True)
class PatchCoreHead(PatchCoreParams, Head):
    """Keeps a coreset of the normal training images' patch vectors; scores a patch by its
    distance to the nearest of them, an image by its worst patch (reweighted, eq. 7). Its
    parameters are declared in ``settings.py``."""

    name = "patchcore"
    needs_trunk = True
    localises = True
    training_note = ("leave-one-image-out PatchCore scores of the training images (each against the memory bank "
                     "less the patches that came from it)")

    def _check_params(self) -> None:
        super()._check_params()
        if self.neighbourhood % 2 == 0:
            raise PipelineError(f"the PatchCore neighbourhood must be odd (a p x p neighbourhood centred on its "
                                f"patch), not {self.neighbourhood}.")
        if self.reweight_neighbours == 1:
            raise PipelineError("reweight_neighbours 1 would weigh every image score by 0 (N_b(m*) counts m* "
                                "itself): use 0 (or none) for the largest patch score alone, or 2 or more.")

    # -- what it reads --------------------------------------------------------------------

    def _maps(self, features: Features, layers: list[str] | None) -> tuple[list[str], int]:
        """The layers read (finest first) and the number of images, after checking the maps'
        shapes (and, once fitted, that they are those the head was fitted on)."""
        layers = patch_layers(features, layers, WHO)
        shapes = {name: tuple(np.shape(features.trunk[name])) for name in layers}
        for name, shape in shapes.items():
            if len(shape) != 4:
                raise PipelineError(f"the full-resolution map {name!r} must be (images, channels, height, width), got "
                                    f"shape {shape}.")
        counts = {shape[0] for shape in shapes.values()}
        if len(counts) != 1:
            raise PipelineError(f"the maps {', '.join(layers)} hold different numbers of images: "
                                f"{', '.join(str(s[0]) for s in shapes.values())}.")
        if hasattr(self, "bank_"):
            channels = [shapes[name][1] for name in layers]
            grid = list(shapes[layers[0]][2:])
            if channels != self.channels_ or grid != self.grid_:
                got = ", ".join(f"{name} {shapes[name][1:]}" for name in layers)
                want = ", ".join(f"{name} ({c}, ...)" for name, c in zip(self.layers_, self.channels_))
                raise PipelineError(f"the PatchCore head was fitted on the maps {want} at a {self.grid_[0]} x "
                                    f"{self.grid_[1]} grid; these features have {got}. Score with a cache made by "
                                    f"the same backbone and image size.")
        return layers, counts.pop()

    def _patches(self, features: Features, rows: slice) -> torch.Tensor:
        """The patch vectors of a block of images, (n, H x W, dim)."""
        vectors = patch_features(features, self.layers_, rows, self.neighbourhood, self.share_)
        return vectors.reshape(len(vectors), -1, self.dim_)

    def _block(self) -> int:
        return max(1, PATCHES_PER_BLOCK // (self.grid_[0] * self.grid_[1]))

    def _bank(self) -> torch.Tensor:
        return self.bank_.to(resolve_device(self.device))

    def _fitted(self, what: str) -> None:
        if not hasattr(self, "bank_"):
            raise PipelineError(f"fit the PatchCore head before {what}")

    # -- fit and score --------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        for name in ("bank_", "bank_images_"):  # a refit starts from nothing (the checks read bank_)
            self.__dict__.pop(name, None)
        asked = specs(PatchCoreParams)["layers"].check(self.layers, "layers")  # "a,b" (Python) as a list too
        self.layers_, count = self._maps(features, None if asked is None else list(asked))
        if count < 1:
            raise PipelineError("the PatchCore head needs at least one training image.")
        first = np.shape(features.trunk[self.layers_[0]])
        self.channels_ = [int(np.shape(features.trunk[name])[1]) for name in self.layers_]
        self.grid_ = [int(first[2]), int(first[3])]
        self.share_ = layer_share(self.channels_, self.dim)
        self.dim_ = sum(min(channels, self.share_) for channels in self.channels_)
        per_image = self.grid_[0] * self.grid_[1]
        rows = np.empty((count * per_image, self.dim_), dtype=np.float32)  # every training patch: the bank's size
        for block in row_blocks(count, self._block()):
            rows[block.start * per_image:block.stop * per_image] = \
                self._patches(features, block).reshape(-1, self.dim_).numpy()
        if self.coreset_fraction >= 1.0:
            chosen = np.arange(len(rows))
        else:
            size = coreset_size(len(rows), self.coreset_fraction)
            chosen = np.sort(greedy_coreset(rows, size, self.projection_dim, self.seed, resolve_device(self.device)))
        # Sorted, so each training image's rows are one contiguous range (leave-one-image-out).
        self.bank_ = torch.from_numpy(np.ascontiguousarray(rows[chosen]))
        self.bank_images_ = (chosen // per_image).astype(np.int64)
        self.n_train_ = count

    def _scores(self, features: Features | np.ndarray | Any, what: str, reweight: bool = True):
        """(patch score grids (n, H, W), image scores (n,)) a block of images at a time."""
        self._fitted(what)
        features = Features.of(features)
        _, count = self._maps(features, self.layers_)
        bank = Bank(self._bank())
        neighbours = self.reweight_neighbours if reweight else 0
        for block in row_blocks(count, self._block()):
            grids, scores = image_scores(bank, self._patches(features, block), neighbours, self.device,
                                         self.precision)
            yield grids.reshape(len(grids), *self.grid_), scores

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        parts = [scores for _, scores in self._scores(features, "scoring")]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def patch_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Each image's grid of patch scores (distances to the nearest bank vector), (n, H, W)
        float64, before upsampling."""
        parts = [grids for grids, _ in self._scores(features, "scoring", reweight=False)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.grid_))

    def anomaly_maps(self, features: Features | np.ndarray | Any, size: int) -> np.ndarray:
        """The patch score grids upsampled to ``size`` x ``size`` and smoothed (sigma 4 at 224
        pixels), (n, size, size) float32."""
        parts = [upsample_and_smooth(grids, size) for grids, _ in self._scores(features, "making anomaly maps",
                                                                               reweight=False)]
        return np.concatenate(parts) if parts else np.zeros((0, size, size), np.float32)

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Leave-one-image-out: each training image scored against the bank less its own rows
        (module docstring). ``features`` must be the training images, in the order fitted."""
        self._fitted("taking its training scores")
        features = Features.of(features)
        _, count = self._maps(features, self.layers_)
        if count != self.n_train_:
            raise PipelineError(f"the PatchCore head's training scores are taken on the {self.n_train_} images it "
                                f"was fitted on, not on {count}.")
        bank = self._bank()
        edges = np.searchsorted(self.bank_images_, np.arange(count + 1))  # image i: bank rows edges[i]:edges[i+1]
        out = np.empty(count, dtype=np.float64)
        for block in row_blocks(count, self._block()):
            patches = self._patches(features, block)
            for j, image in enumerate(range(block.start, block.stop)):
                skipped = Bank(bank, (int(edges[image]), int(edges[image + 1])))
                out[image] = image_scores(skipped, patches[j:j + 1], self.reweight_neighbours, self.device,
                                          self.precision)[1][0]
        return out

    # -- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self, bank_dtype: str = "float32") -> dict:
        """The bank (float32; float16 halves the file, its rounding moves scores a little), the
        training image of each bank row (the threshold's leave-one-image-out), the layers, their
        channels, the grid and the parameters."""
        self._fitted("saving it")
        if bank_dtype not in BANK_DTYPES:
            raise PipelineError(f"a PatchCore memory bank is saved as {' or '.join(BANK_DTYPES)}, not {bank_dtype!r}.")
        params = {name: getattr(self, name) for name in specs(PatchCoreParams) if name != "device"}
        params["layers"] = list(self.layers) if isinstance(self.layers, (list, tuple)) else self.layers
        return {"params": params, "layers": list(self.layers_), "channels": list(self.channels_),
                "grid": list(self.grid_), "feature_dim": int(self.dim_), "share": int(self.share_), "n_train": int(self.n_train_),
                "bank": self.bank_.to(getattr(torch, bank_dtype)).contiguous(),
                "bank_images": torch.from_numpy(self.bank_images_)}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> PatchCoreHead:
        params = dict(state["params"])
        if isinstance(params.get("layers"), list):
            params["layers"] = tuple(str(name) for name in params["layers"])
        own = {f.name for f in fields(cls)}
        head = cls(**{k: v for k, v in params.items() if k in own}, device=device)
        head._check_params()
        head.layers_ = [str(name) for name in state["layers"]]
        head.channels_ = [int(c) for c in state["channels"]]
        head.grid_ = [int(g) for g in state["grid"]]
        head.dim_, head.share_ = int(state["feature_dim"]), int(state["share"])
        head.n_train_ = int(state["n_train"])
        bank = torch.as_tensor(state["bank"]).to(torch.float32)
        images = torch.as_tensor(state["bank_images"]).to(torch.int64).numpy()
        if bank.ndim != 2 or bank.shape[1] != head.dim_ or len(images) != len(bank) or not len(bank):
            raise PipelineError(f"the saved PatchCore bank has shape {tuple(bank.shape)} for {len(images)} image "
                                f"indices and dimension {head.dim_}: the file is damaged.")
        if len(head.layers_) != len(head.channels_) or len(head.grid_) != 2:
            raise PipelineError("the saved PatchCore head's layers, channels and grid do not agree: the file is "
                                "damaged.")
        head.bank_, head.bank_images_ = bank.contiguous(), images
        return head


HEAD = PatchCoreHead
