"""PANDA head (Reiss et al., "PANDA: Adapting Pretrained Features for Anomaly Detection and
Segmentation", CVPR 2021; code: talreiss/PANDA) on cached trunk maps.

PANDA fine-tunes the later stages of a pretrained backbone on the normal class with the
compactness loss, then scores by kNN on the adapted features. Its code runs the whole backbone
on every image in every epoch, although the first stages are frozen. Here the frozen trunk's
output is read from the cache (``pipeline.extract --trunk-maps``), so only the trainable tail
runs: a copy of the backbone's stages after the trunk (``FeatureExtractor.split``), loaded with
the very weights that made the cache (their SHA-256 is checked).

As the authors' code does:
- the centre ``c`` is the mean of the normal class's features before adaptation, fixed;
- SGD, lr 1e-2, momentum 0.9, weight decay 5e-5, the gradient norm clipped at 1e-3, batches of
  32 in a new random order each epoch (the last one smaller), 15 epochs (PANDA-Early);
- batch norm in eval mode throughout (their ``train_model`` calls ``model.eval()`` and never
  ``model.train()``): running statistics fixed, the affine weights trained with the rest;
- EWC (``fisher`` not none): compactness + ``lambda/2 sum F (theta - theta*)^2``, lambda 1e4;
- score: the sum of squared distances to the k = 2 nearest adapted training features
  (``pipeline.heads.knn``).

The test AUROC per epoch is recorded by the evaluation through ``callback``; epoch 0 is the
model before adaptation (DN2 on the same trunk maps), as the authors' code prints it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.knn.head import KNNHead
from pipeline.heads.panda.model import classifier_fisher, compactness_loss, embed, train_step, uniform_fisher
from pipeline.heads.panda.settings import PandaParams


@dataclass(eq=False, repr=False, kw_only=True)
class PandaHead(PandaParams, Head):
    """A copy of the backbone's tail adapted to the normal class; score = kNN on its features.
    Its parameters are declared in ``settings.py``; the backbone's are the cache's (the stage
    fills them in from its metadata)."""

    name = "panda"
    needs_trunk = True
    training_note = ("leave-one-out kNN scores of the adapted training features (each against the other "
                     "training features)")

    # -- what it reads --------------------------------------------------------------------

    def _trunk_maps(self, features: Features) -> np.ndarray:
        """The trunk maps of the stage this head's tail starts after."""
        stage = self.trunk_stage_
        if stage not in features.trunk:
            have = ", ".join(features.trunk) or "none"
            raise PipelineError(f"PANDA needs the full-resolution trunk maps of {self.backbone}'s {stage!r} stage "
                                f"(trunk maps given: {have}). Extract the cache with python -m pipeline.extract "
                                f"--trunk-maps {stage}.")
        return np.asarray(features.trunk[stage])

    def _pretrained(self):
        """The backbone with the weights that made the cache, refused if they are other weights."""
        from pipeline.backbones import get_spec, load_backbone

        self.trunk_stage_ = self.trunk_end or get_spec(self.backbone).trunk_end
        extractor, weights = load_backbone(self.backbone, self.image_size, self.weights_tag, self.weights_file)
        if self.weights_sha256 and weights.sha256 != self.weights_sha256:
            raise PipelineError(f"the cache's trunk maps were made with {self.backbone} weights of SHA-256 "
                                f"{self.weights_sha256[:12]}..., but the weights loaded now ({weights.file}) have "
                                f"SHA-256 {str(weights.sha256)[:12]}...: the tail would not continue the trunk. "
                                f"Pass the cache's weights file with --weights FILE.")
        return extractor

    # -- training -------------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        """Adapt the tail on the normal class's trunk maps; ``callback(self, record)`` after
        each epoch, and for epoch 0 before any (the evaluation records the test AUROC there)."""
        device = resolve_device(self.device)
        extractor = self._pretrained()
        maps = torch.as_tensor(self._trunk_maps(features)).to(device)  # float16, as cached
        if len(maps) < max(self.k, 1):
            raise PipelineError(f"PANDA: the normal class has {len(maps)} training images, fewer than k = {self.k}.")
        _, pretrained_tail = extractor.split(self.trunk_stage_)
        tail = copy.deepcopy(pretrained_tail).to(device, memory_format=torch.channels_last)
        tail.eval()  # batch norm keeps its running statistics, as the authors' code (model.eval())
        tail.requires_grad_(True)
        self.tail_ = tail
        initial = embed(tail, maps, self.precision)
        self.centre_ = initial.mean(dim=0)
        params = [p for p in tail.parameters() if p.requires_grad]
        anchors = [p.detach().clone() for p in params]  # the pretrained weights, EWC's theta*
        generator = torch.Generator().manual_seed(self.seed)
        fisher = self._fisher(tail, extractor, maps, params, generator)
        optimiser = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

        self.history_ = []
        self._set_gallery(initial)
        record = self._record(0, {"loss": float(compactness_loss(initial, self.centre_))})
        if callback is not None:
            callback(self, record)
        ewc = None if fisher is None else (anchors, fisher, self.ewc_lambda)
        for epoch in range(1, self.epochs + 1):
            sums: dict[str, float] = {}
            # A new order each epoch, the last minibatch smaller (the authors' shuffled loader).
            batches = torch.randperm(len(maps), generator=generator).split(self.batch_size)
            for index in batches:
                terms = train_step(tail, params, optimiser, maps[index.to(device)], self.centre_, self.grad_clip,
                                   self.precision, ewc)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
            record = self._record(epoch, {name: total / len(batches) for name, total in sums.items()})
            if not math.isfinite(record["loss"]):
                raise PipelineError(f"PANDA diverged at epoch {epoch} (loss {record['loss']}); lower --lr.")
            if callback is not None or epoch == self.epochs:
                self._set_gallery(embed(tail, maps, self.precision))
            if callback is not None:
                callback(self, record)
        tail.requires_grad_(False)

    def _fisher(self, tail: torch.nn.Module, extractor, maps: torch.Tensor, params: list[torch.Tensor],
                generator: torch.Generator) -> list[torch.Tensor] | None:
        """EWC's Fisher diagonal, or None without EWC."""
        if self.fisher == "none":
            return None
        if self.fisher == "uniform":
            return uniform_fisher(params)
        if extractor.classifier is None:
            raise PipelineError(f"PANDA: {self.backbone}'s classifier does not read the pooled feature, so the "
                                f"normal_class Fisher cannot be computed for it; use --fisher uniform.")
        classifier = extractor.classifier.to(device=maps.device)
        batches = torch.randperm(len(maps), generator=generator).split(self.batch_size)[:self.fisher_batches]
        return classifier_fisher(tail, classifier, maps, [b.to(maps.device) for b in batches], self.precision)

    def _record(self, epoch: int, losses: dict[str, float]) -> dict:
        record = {"epoch": epoch, **losses}
        self.history_.append(record)
        return record

    def _set_gallery(self, adapted: torch.Tensor) -> None:
        """The kNN gallery: the adapted features of the training images."""
        self.knn_ = KNNHead(k=self.k, device=self.device, threshold_quantile=None)
        self.knn_.fit(adapted.cpu().numpy())

    # -- scoring --------------------------------------------------------------------------

    def adapted_features(self, features: Features | np.ndarray) -> np.ndarray:
        """The adapted tail's pooled features (N, D) of the trunk maps in ``features``."""
        if not hasattr(self, "tail_"):
            raise PipelineError("fit the PANDA head before scoring")
        maps = torch.as_tensor(self._trunk_maps(Features.of(features)))
        return embed(self.tail_, maps, self.precision).cpu().numpy()

    def score_samples(self, features: Features | np.ndarray) -> np.ndarray:
        return self.knn_.score_samples(self.adapted_features(features))

    def training_scores(self, features: Features | np.ndarray) -> np.ndarray:
        """Leave-one-out kNN scores of the gallery (as the kNN head's)."""
        return self.knn_.training_scores(None)

    # -- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self) -> dict:
        """The parameters, the adapted tail's weights (its frame is rebuilt from the backbone's
        architecture: nothing is downloaded to load a head), the centre and the gallery."""
        if not hasattr(self, "tail_"):
            raise PipelineError("fit the PANDA head before saving it")
        knn = self.knn_._state(gallery_dtype="float32")
        return {"config": self.params(), "trunk_stage": self.trunk_stage_, "feature_dim": knn["feature_dim"],
                "tail": {name: value.detach().cpu().clone() for name, value in self.tail_.state_dict().items()},
                "centre": self.centre_.detach().cpu().clone(), "knn": knn,
                # Plain floats: the file is read with weights_only=True, which refuses NumPy scalars.
                "history": json.loads(json.dumps(self.history_, default=float))}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "PandaHead":
        from pipeline.backbones import backbone_architecture

        head = cls(**{**state["config"], "device": device})
        head.trunk_stage_ = str(state["trunk_stage"])
        _, tail = backbone_architecture(head.backbone, head.image_size).split(head.trunk_stage_)
        tail.load_state_dict(state["tail"])
        head.tail_ = tail.to(device, memory_format=torch.channels_last).eval()
        head.centre_ = torch.as_tensor(state["centre"]).to(device)
        head.knn_ = KNNHead._from_state(state["knn"], device=device)
        head.history_ = list(state.get("history", []))
        return head


HEAD = PandaHead
