"""PaDiM head (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly
Detection and Localization", ICPR 2021) on the cache's full-resolution maps.

- Patch embeddings: the maps of ``layers`` (``Features.trunk``, ``pipeline.extract
  --patch-maps``) brought to the finest one's grid by bilinear upsampling and concatenated
  (``pipeline.heads.patches.on_one_grid``), then a random subset of ``channels`` of their
  channels, the same for every position and image, drawn from ``seed`` (the paper's random
  dimensionality reduction; all of them when the maps have fewer: clamped, not refused, and
  the number kept is ``channels_used_``).
- One Gaussian per grid position (i, j), fitted on the normal training images, in float64:
  the mean and the covariance + ``epsilon`` I (``covariance``: regularised, the paper's
  empirical covariance normalised by N - 1 as its code's ``np.cov``; ledoit_wolf,
  scikit-learn's Ledoit-Wolf estimate, vectorised over positions in ``model.py``).
- Kept: every position's mean and the inverse covariance through its Cholesky factor L
  (covariance = L L^T): W = L^-1, lower triangular, the inverse covariance being W^T W, so
  that scoring is one batched product (``model.whitening_factors``). H*W*d*d float64 values:
  28*28*100*100*8 bytes = 63 MB for a 28 x 28 grid and 100 channels (in memory and in a saved
  head), whatever the number of training images.
- The anomaly grid of an image: the Mahalanobis distance of each patch to its position's
  Gaussian, the distance itself and not its square, as the paper's M(x_ij) = sqrt((x_ij -
  mu_ij)^T S_ij^-1 (x_ij - mu_ij)) and its code (scipy's ``mahalanobis``).
- ``anomaly_maps(features, size)``: that grid upsampled (bilinear) to the input's side and
  smoothed by a Gaussian of sigma 4 pixels (``patches.upsample_and_smooth``), as the paper.
- The image score (``score_samples``): the maximum of the distance grid, before upsampling
  and smoothing. The paper's code and anomalib take the maximum of the upsampled, smoothed
  map instead; that needs the input's side, which ``score_samples`` is not given (the head
  contract scores from features alone), and it differs little: bilinear upsampling cannot
  raise the maximum (its values are convex combinations of the grid's), and the blur, half a
  patch wide at a 28 x 28 grid, lowers a lone hot patch slightly more than a wide anomaly.
  So an image's score is the maximum of its map with smoothing off, every map value is at
  most its image's score, and the threshold (taken on training scores) is on the same scale.

Scoring works a block of images at a time (``patches.row_blocks``), so that the float64
embeddings of a block stay near ``model.BLOCK_BYTES``. Fit reads the training maps twice
(the means, then the centred sums; ``model.py`` says why) and, for the threshold, once more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.padim.model import (choose_channels, images_per_block, ledoit_wolf_covariance, mahalanobis,
                                        position_means, position_scatter, regularised_covariance, whitening_factors)
from pipeline.heads.padim.settings import PadimParams
from pipeline.heads.patches import on_one_grid, patch_layers, row_blocks, upsample_and_smooth


# Folds of the cross-fitted training scores (``training_scores``): the threshold's reference.
CROSS_FOLDS = 5


@dataclass(eq=False, repr=False, kw_only=True)
class PadimHead(PadimParams, Head):
    """A Gaussian per grid position of the normal class's patch embeddings; an image's anomaly
    grid is each patch's Mahalanobis distance to its position's Gaussian, its score the grid's
    maximum. Its parameters are declared in ``settings.py``."""

    name = "padim"
    needs_trunk = True
    localises = True
    training_note = (f"out-of-sample image scores of the training images, each scored by a head fitted on the other "
                     f"folds of {CROSS_FOLDS} (in-sample below 4 images): a Gaussian of d channels fitted on few more "
                     f"than d images scores its own images far lower than new ones")

    # --- the embeddings --------------------------------------------------------------------

    def _shapes(self, features: Features, layers: list[str]) -> tuple[int, list[tuple[int, int, int]]]:
        """The number of images and each layer's (C, H, W), refused unless every map is
        (N, C, H, W) for the same N."""
        shapes, counts = [], set()
        for name in layers:
            shape = tuple(int(s) for s in np.shape(features.trunk[name]))
            if len(shape) != 4:
                raise PipelineError(f"the padim head reads maps of shape (images, channels, height, width); "
                                    f"{name} has shape {shape}.")
            counts.add(shape[0])
            shapes.append(shape[1:])
        if len(counts) != 1:
            raise PipelineError(f"the maps {', '.join(layers)} hold different numbers of images "
                                f"({', '.join(map(str, sorted(counts)))}).")
        return counts.pop(), shapes

    @staticmethod
    def _blocks(features: Features, layers: list[str], index: torch.Tensor, count: int,
                block: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, their embeddings (P, n, d) float64) a block of images at a time."""
        for rows in row_blocks(count, block):
            grid = on_one_grid(features, layers, rows)  # (n, C, H, W) float32
            chosen = grid.index_select(1, index).flatten(2).permute(2, 0, 1)  # (P, n, d)
            # Contiguous: the batched products run ten times slower on the permuted view.
            yield rows, chosen.to(torch.float64).contiguous()

    def _block_size(self) -> int:
        positions = int(np.prod(self.grid_))
        return images_per_block(positions, len(self.channel_index_), sum(c for c, _, _ in self.layer_shapes_))

    # --- fit -------------------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        layers = patch_layers(features, self.layers, self.name)
        count, shapes = self._shapes(features, layers)
        if count < 2:
            raise PipelineError(f"the padim head fits a covariance at each grid position: it needs at least 2 "
                                f"training images, got {count}.")
        available = sum(c for c, _, _ in shapes)
        index = choose_channels(available, self.channels, self.seed)
        grid = shapes[0][1:]
        block = images_per_block(grid[0] * grid[1], len(index), available)
        chosen = torch.as_tensor(index)
        mean, count = position_means(b for _, b in self._blocks(features, layers, chosen, count, block))
        if not torch.isfinite(mean).all():
            raise PipelineError("the padim head's training maps hold NaN or infinite values.")
        scatter, fourth = position_scatter((b for _, b in self._blocks(features, layers, chosen, count, block)), mean)
        shrinkage = None
        if self.covariance == "ledoit_wolf":
            covariance, shrinkage = ledoit_wolf_covariance(scatter, fourth, count, self.epsilon)
        else:
            covariance = regularised_covariance(scatter, count, self.epsilon)
        del scatter
        whitening = whitening_factors(covariance)
        self.layers_, self.layer_shapes_, self.grid_ = layers, shapes, (int(grid[0]), int(grid[1]))
        self.channel_index_, self.channels_used_, self.channels_available_ = index, len(index), available
        self.mean_, self.whitening_, self.shrinkage_, self.n_train_ = mean, whitening, shrinkage, count

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Each training image's score by a head fitted, with the same channels, on the other
        folds of ``CROSS_FOLDS`` (at least 2 images each): the threshold's reference. In-sample
        distances would not do: with 100 channels and 60 images, the fitted Gaussians score their
        own images some 30 times lower than new normal ones, and a threshold taken on them flags
        every new image. Fewer than 4 images: the in-sample scores."""
        features = Features.of(features)
        count, _ = self._shapes(features, self.layers_)
        if count < 4:
            return self.score_samples(features)
        scores = np.empty(count, dtype=np.float64)
        for held in np.array_split(np.arange(count), min(CROSS_FOLDS, count // 2)):
            part = type(self)(**self.get_params())
            part._fit(features.take(np.setdiff1d(np.arange(count), held)), None, None)
            scores[held] = part.score_samples(features.take(held))
        return scores

    # --- score -----------------------------------------------------------------------------

    def _check_features(self, features: Features) -> int:
        """The number of images, refused unless they hold the fitted layers on the fitted grid."""
        if not hasattr(self, "whitening_"):
            raise PipelineError("fit the padim head before scoring")
        patch_layers(features, self.layers_, self.name)  # refuses a missing map, naming those there are
        count, shapes = self._shapes(features, self.layers_)
        for name, fitted, given in zip(self.layers_, self.layer_shapes_, shapes):
            if tuple(fitted) != tuple(given):
                raise PipelineError(f"the padim head was fitted on {name} maps of {fitted[0]} channels on a "
                                    f"{fitted[1]} x {fitted[2]} grid; these are {given[0]} channels on "
                                    f"{given[1]} x {given[2]}. Its Gaussians are per grid position: score maps of "
                                    f"the backbone and input size it was fitted on.")
        return count

    def distance_grids(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Each image's anomaly grid: every patch's Mahalanobis distance to its position's
        Gaussian, (N, H, W) float64 on the fitted grid."""
        features = Features.of(features)
        count = self._check_features(features)
        height, width = self.grid_
        grids = np.empty((count, height * width), dtype=np.float64)
        index = torch.as_tensor(np.asarray(self.channel_index_))
        for rows, block in self._blocks(features, self.layers_, index, count, self._block_size()):
            grids[rows] = mahalanobis(block, self.mean_, self.whitening_).T.numpy()
        return grids.reshape(count, height, width)

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The maximum of each image's distance grid (before upsampling and smoothing: the
        module's docstring says why), float64."""
        grids = self.distance_grids(features)
        return grids.reshape(len(grids), -1).max(axis=1)

    def anomaly_maps(self, features: Features | np.ndarray | Any, size: int) -> np.ndarray:
        """The distance grids upsampled to ``size`` x ``size`` and smoothed (sigma 4 pixels at
        224), as the paper: (N, size, size) float32."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise PipelineError(f"the anomaly maps' size must be a positive number of pixels, got {size!r}.")
        grids = self.distance_grids(features)
        maps = np.empty((len(grids), int(size), int(size)), dtype=np.float32)
        per_block = max(1, (64 * 2**20) // (4 * int(size) ** 2))
        for rows in row_blocks(len(grids), per_block):
            maps[rows] = upsample_and_smooth(grids[rows], int(size))
        return maps

    # --- saving (pipeline.heads.saving) -------------------------------------------------

    def _state(self) -> dict:
        """The parameters, the layers and their shapes, the kept channels, and each position's
        mean and inverse Cholesky factor W = L^-1 (float64): no training images."""
        if not hasattr(self, "whitening_"):
            raise PipelineError("fit the padim head before saving it")
        return {"params": {"layers": None if self.layers is None else list(self.layers), "channels": self.channels,
                           "covariance": self.covariance, "epsilon": self.epsilon, "seed": self.seed,
                           "threshold_quantile": self.threshold_quantile},
                "layers": list(self.layers_), "layer_shapes": [list(s) for s in self.layer_shapes_],
                "grid": list(self.grid_), "feature_dim": int(self.channels_used_),
                "channels_available": int(self.channels_available_), "n_train": int(self.n_train_),
                "channel_index": torch.as_tensor(np.asarray(self.channel_index_, dtype=np.int64)),
                "mean": self.mean_, "whitening": self.whitening_, "shrinkage": self.shrinkage_}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "PadimHead":
        params = dict(state["params"])
        layers = params["layers"]
        head = cls(layers=None if layers is None else tuple(str(name) for name in layers),
                   channels=params["channels"], covariance=str(params["covariance"]),
                   epsilon=float(params["epsilon"]), seed=int(params["seed"]),
                   threshold_quantile=params["threshold_quantile"])
        head.layers_ = [str(name) for name in state["layers"]]
        head.layer_shapes_ = [tuple(int(v) for v in shape) for shape in state["layer_shapes"]]
        head.grid_ = tuple(int(v) for v in state["grid"])
        head.channel_index_ = torch.as_tensor(state["channel_index"]).numpy().astype(np.int64)
        head.channels_used_, head.channels_available_ = len(head.channel_index_), int(state["channels_available"])
        head.n_train_ = int(state["n_train"])
        head.mean_ = torch.as_tensor(state["mean"], dtype=torch.float64)
        head.whitening_ = torch.as_tensor(state["whitening"], dtype=torch.float64)
        shrinkage = state.get("shrinkage")
        head.shrinkage_ = None if shrinkage is None else torch.as_tensor(shrinkage, dtype=torch.float64)
        positions = head.grid_[0] * head.grid_[1]
        dims = head.channels_used_
        if (len(head.layers_) != len(head.layer_shapes_) or tuple(head.mean_.shape) != (positions, dims)
                or tuple(head.whitening_.shape) != (positions, dims, dims)):
            raise PipelineError(f"the padim head's saved state is inconsistent: mean {tuple(head.mean_.shape)}, "
                                f"inverse Cholesky factors {tuple(head.whitening_.shape)} for a {head.grid_} grid and "
                                f"{dims} channels.")
        head._check_params()
        return head


HEAD = PadimHead
