"""AnoMem head (AnoMem paper, sections 3.1-3.2) on frozen multi-scale features.

The paper trains a whole ResNet50 with its contrasted-memory loss. Here the backbone is
frozen, so what is trained is a small projection per scale plus the memories:

- stage A (eq. 3-7): two cached augmented views of each training image; per scale, a few
  random positions of the map (ratio r); NT-Xent between the memory's recollection of view
  1 (normal samples only) and view 2, plus the variance loss;
- stage B: one-class, the scale-weighted L2 norm of ``z - HF(z)`` (eq. 8, 9, 13); or,
  given labelled anomalies, one pooled 2-layer MLP per scale on ``z - HF(z)`` trained with
  the double-hinge loss (eq. 10-12). With ``semi_score="combined"`` (the default, an
  adaptation) the semi-supervised score is the one-class score plus a weight times the
  classifiers' score, both standardised on the normal training rows, the weight chosen by
  stratified cross-validation on the training rows (0, the one-class score alone, where fewer
  than 2 anomalies are labelled): with one labelled anomaly per class on digits, the
  classifiers alone scored 73.1 AUROC against the one-class 99.1.

Ablations (section 4.4): ``scales="last"`` (one scale), ``memory="kmeans"`` (stage A without
memory, then k-means centroids of the projected normal features as the memory).

Adaptations to frozen features, each a parameter whose other value is the paper's literal
form (docs/heads/anomem.md): ``standardise`` (how the frozen features are scaled before
the projection), ``retrieval="cosine"`` (queries and slots L2-normalised, ``beta`` acting on
cosine similarities; paper: ``"dot"``), ``slot_init="data"`` (slots start as projected normal
training vectors; paper: ``"random"``), ``lambda_recall`` (a term that keeps the slots near the
normal features; paper: 0), ``variance_hinge`` (VICReg's hinge on the variance term; paper:
None, the unbounded ``-std``) and ``min_steps`` (stage A runs enough epochs for this many
optimiser steps; small classes otherwise get one step per epoch). Their defaults were chosen
on the digits cache, not on CIFAR-10.

Controls (``control_scores``, ``diagnostics``): the evaluation grades ||z|| alone and the
distance to the nearest slot as scores of their own, and records how peaked the retrieval
softmax is on the test images, so that a reader can see whether the memory is used.

Features are given per scale as a dict: the pooled vector under ``"pooled"`` (N, D), an
intermediate map under its layer name (N, C, g, g); views likewise with a views axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.anomem.model import (HopfieldMemory, Projection, ScaleClassifier, double_hinge, memorise,
                                         nt_xent, recall_loss, variance_loss)
from pipeline.heads.anomem.settings import AnoMemParams
from pipeline.heads.base import POOLED, EpochCallback, Features, Head

# Parameters of heads saved before these options existed, as those heads scored (the divisor
# of each projection's input is stored in the file: "dimension" reads it as it is).
LEGACY_PARAMS = {"retrieval": "dot", "standardise": "dimension", "projection": "mlp", "semi_score": "classifier"}

# semi_score="combined": the candidate weights of the classifiers' standardised score beside the
# one-class one (inf: the classifiers alone), and the cross-validation folds that choose among them.
MIX_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0, float("inf"))
MIX_FOLDS = 5


def positions(array: np.ndarray | torch.Tensor, views: bool = False) -> torch.Tensor:
    """A scale's features as vectors per position: (N, D) -> (N, 1, D); (N, C, g, g) -> (N, g*g, C).
    With ``views``, the second axis is the view and is kept: (N, V, P, C)."""
    t = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    lead = 2 if views else 1
    if t.dim() == lead + 1:
        return t.unsqueeze(lead)
    if t.dim() == lead + 3:
        return t.flatten(lead + 1).transpose(-1, -2).contiguous()
    raise PipelineError(f"a scale's features must be vectors or (C, g, g) maps, got shape {tuple(t.shape)}.")


@dataclass(eq=False, repr=False, kw_only=True)
class AnoMemHead(AnoMemParams, Head):
    """``fit(Features(pooled, maps, views), labels)`` then ``score_samples``; higher = more anomalous.
    Its parameters are declared in ``settings.py``.

    With ``warm_start`` and a head already fitted (one-class), ``fit`` with labelled anomalies
    trains stage B only, on the stage A it has (``--semi-stage-a reuse``)."""

    name = "anomem"
    needs_maps = True
    needs_views = True
    uses_labels = True

    def __post_init__(self) -> None:
        self.scales_: list[str] = []
        self.weights_: dict[str, float] = {}
        self.projections_ = torch.nn.ModuleDict()
        self.memories_ = torch.nn.ModuleDict()
        self.classifiers_ = torch.nn.ModuleDict()
        self.history_: list[dict] = []
        self.mix_: dict = {}  # semi_score="combined": the chosen weight and standardisations (_choose_mix)

    # --- which scales --------------------------------------------------------------------

    def _choose_scales(self, train: dict[str, np.ndarray]) -> list[str]:
        if POOLED not in train:
            raise PipelineError("AnoMem needs the pooled features (key 'pooled').")
        maps = [name for name in train if name != POOLED]
        if self.scales == "last":
            return [POOLED]
        if len(maps) != 1:
            raise PipelineError(f"multi-scale AnoMem needs exactly one intermediate map, got {maps or 'none'}: "
                                f"extract the cache with --maps intermediate, or use scales=last.")
        return [maps[0], POOLED]

    def _module_key(self, scale: str) -> str:
        return scale.replace(".", "_")  # ModuleDict keys cannot hold dots

    def _new_projection(self, in_dim: int) -> Projection:
        return Projection(in_dim, self.proj_hidden, self.proj_dim, l2=self.standardise == "l2",
                          mlp=self.projection == "mlp")

    def _project(self, scale: str, x: torch.Tensor) -> torch.Tensor:
        """z of a scale's vectors: the projection's output, L2-normalised for cosine retrieval."""
        z = self.projections_[self._module_key(scale)](x)
        return torch.nn.functional.normalize(z, dim=-1) if self.retrieval == "cosine" else z

    # --- training ----------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        """``features``: the pooled vectors and maps of the training images, with their cached
        views (same rows, a views axis of at least 2); ``labels``: None (one-class) or 1 for
        each labelled anomaly (semi-supervised)."""
        train, views = features.scales(), features.views or {}
        is_normal = None if labels is None else labels == 0
        if self.warm_start and self.scales_ and is_normal is not None:
            self.fit_classifiers(train, is_normal, self.seed)
            return
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        device = resolve_device(self.device)
        self.scales_ = self._choose_scales(train)
        # lambda_s = 2^(s-1): more weight on the later, more semantic scale.
        self.weights_ = {scale: 2.0 ** s for s, scale in enumerate(self.scales_)}
        n = len(train[POOLED])
        normal = torch.ones(n, dtype=torch.bool) if is_normal is None else torch.as_tensor(np.asarray(is_normal, bool))
        if not normal.any():
            raise PipelineError("AnoMem needs normal training samples.")
        plain = {s: positions(train[s]).to(device) for s in self.scales_}
        view_data = {}
        for s in self.scales_:
            if s not in views:
                raise PipelineError(f"no cached views of scale {s!r}: extract with --views 2 (and the same --maps).")
            view_data[s] = positions(views[s], views=True).to(device)
            if view_data[s].shape[0] != n or view_data[s].shape[1] < 2:
                raise PipelineError(f"the views of {s!r} must cover the {n} training rows with at least 2 views, "
                                    f"got shape {tuple(view_data[s].shape[:2])}.")
        normal = normal.to(device)
        for s in self.scales_:
            key = self._module_key(s)
            slots = self.slots_last if s == POOLED else self.slots_intermediate
            projection = self._new_projection(plain[s].shape[-1])
            projection.set_statistics(plain[s][normal.to(device)], self.standardise)  # normal images only
            self.projections_[key] = projection
            self.memories_[key] = HopfieldMemory(slots, projection.out_dim, self.beta, self.hopfield_steps,
                                                 normalise=self.retrieval == "cosine")
        self.projections_.to(device)
        self.memories_.to(device)
        if self.memory == "learnt" and self.slot_init == "data":
            self._slots_from_data(plain, normal, generator)
        self._stage_a(view_data, plain, normal, generator, callback)
        if self.memory == "kmeans":
            self._kmeans_memories(plain, normal)
        self.classifiers_, self.mix_ = torch.nn.ModuleDict(), {}
        if not bool(normal.all()):
            self._stage_b_supervised(plain, normal, generator)

    def fit_classifiers(self, train: dict[str, np.ndarray], is_normal: np.ndarray, seed: int = 0) -> "AnoMemHead":
        """Stage B only, semi-supervised, on a head whose stage A is done (projections and
        memories are kept as they are): a cheaper protocol than the paper's, in which the
        labelled anomalies also take part in stage A."""
        if not self.scales_:
            raise PipelineError("fit the AnoMem head (stage A) before training its classifiers")
        device = next(self.memories_.parameters()).device
        normal = torch.as_tensor(np.asarray(is_normal, bool)).to(device)
        if normal.all() or not normal.any():
            raise PipelineError("semi-supervised training needs both normal images and labelled anomalies.")
        plain = {s: positions(train[s]).to(device) for s in self.scales_}
        torch.manual_seed(seed)
        self._stage_b_supervised(plain, normal, torch.Generator().manual_seed(seed))
        return self

    @torch.no_grad()
    def _slots_from_data(self, plain: dict[str, torch.Tensor], normal: torch.Tensor,
                         generator: torch.Generator) -> None:
        """Start each memory from the (untrained) projections of normal training vectors drawn
        at random, one slot per vector: at most as many slots as there are vectors (k-means
        keeps fewer slots likewise)."""
        for s in self.scales_:
            key = self._module_key(s)
            z = self._project(s, plain[s][normal]).flatten(0, 1)
            memory = self.memories_[key]
            chosen = torch.randperm(len(z), generator=generator)[:memory.patterns.shape[0]].to(z.device)
            memory.patterns = torch.nn.Parameter(z[chosen].clone())

    def stage_a_epochs(self, n: int) -> int:
        """Stage A's epochs for ``n`` training images: ``epochs``, or more where that many
        epochs would make fewer than ``min_steps`` optimiser steps."""
        steps_per_epoch = max(1, -(-n // self.batch_size))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))

    def _stage_a(self, views: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], normal: torch.Tensor,
                 generator: torch.Generator, callback: EpochCallback | None) -> None:
        learnt = self.memory == "learnt"
        parameters = list(self.projections_.parameters()) + (list(self.memories_.parameters()) if learnt else [])
        self.history_ = []
        if not parameters:  # k-means memory on the features themselves: nothing to train
            return
        optimiser = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        n = len(normal)
        steps_per_epoch = max(1, -(-n // self.batch_size))
        epochs = self.stage_a_epochs(n)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
        for epoch in range(1, epochs + 1):
            self.projections_.train()
            totals = {"loss": 0.0, "ntxent": 0.0, "variance": 0.0, "recall": 0.0}
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, self.batch_size):
                batch = order[start:start + self.batch_size]
                if len(batch) < 2:
                    continue
                loss, parts = self._stage_a_loss(views, plain, normal, batch.to(normal.device), generator, learnt)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                totals["loss"] += float(loss.detach()) / steps_per_epoch
                for name, part in zip(("ntxent", "variance", "recall"), parts):
                    totals[name] += part / steps_per_epoch
            record = {"epoch": epoch, **totals}
            self.history_.append(record)
            if callback is not None:
                if not learnt:  # the k-means ablation is watched with its own memory, not the random one
                    self._kmeans_memories(plain, normal)
                callback(self, record)

    def _stage_a_loss(self, views, plain, normal, batch, generator, learnt) -> tuple[torch.Tensor, tuple[float, ...]]:
        """Eq. 7 on one batch: a random ratio r of each scale's positions, weighted by lambda_s,
        averaged over all sampled positions; plus ``lambda_recall`` times the recollection loss
        of the same images' plain (unaugmented) features, the ones the memory will score."""
        total, count, ntx_sum, var_sum, recall_sum = 0.0, 0, 0.0, 0.0, 0.0
        y = normal[batch]
        for s in self.scales_:
            key = self._module_key(s)
            data = views[s][batch]  # (B, V, P, C)
            n_views, n_positions = data.shape[1], data.shape[2]
            pair = torch.randperm(n_views, generator=generator)[:2] if n_views > 2 else torch.tensor([0, 1])
            ratio = self.sampling_ratio if s != POOLED else 1.0
            chosen = torch.randperm(n_positions, generator=generator)[:max(1, int(n_positions * ratio))]
            first = self._project(s, data[:, pair[0]][:, chosen])   # (B, k, d)
            second = self._project(s, data[:, pair[1]][:, chosen])
            keep_near = self._project(s, plain[s][batch][:, chosen]) if learnt and self.lambda_recall else None
            # The variance term reads cosine recollections (norm at most 1) scaled by sqrt(d): unit
            # vectors spread evenly over every direction then have a std of 1 per dimension.
            spread = first.shape[-1] ** 0.5 if self.retrieval == "cosine" else 1.0
            for j in range(len(chosen)):
                z, z_prime = first[:, j], second[:, j]
                recall = z.new_zeros(())
                if learnt:
                    recalled = memorise(z, y, self.memories_[key])
                    var = variance_loss(spread * recalled[y], self.variance_hinge)
                    if keep_near is not None:
                        recall = recall_loss(keep_near[:, j][y], self.memories_[key])
                else:
                    recalled, var = z, z.new_zeros(())
                ntx = nt_xent(recalled, z_prime, self.tau)
                total = total + self.weights_[s] * (ntx + self.lambda_v * var + self.lambda_recall * recall)
                ntx_sum, var_sum = ntx_sum + float(ntx.detach()), var_sum + float(var.detach())
                recall_sum += float(recall.detach())
                count += 1
        return total / count, (ntx_sum / count, var_sum / count, recall_sum / count)

    @torch.no_grad()
    def _kmeans_memories(self, plain: dict[str, torch.Tensor], normal: torch.Tensor) -> None:
        from sklearn.cluster import KMeans

        for s in self.scales_:
            key = self._module_key(s)
            self.projections_.eval()
            z = self._project(s, plain[s][normal]).flatten(0, 1).cpu().numpy()
            memory = self.memories_[key]
            slots = min(memory.patterns.shape[0], len(z))
            centroids = KMeans(slots, n_init=1, random_state=self.seed).fit(z).cluster_centers_
            memory.patterns = torch.nn.Parameter(torch.as_tensor(centroids, dtype=torch.float32,
                                                                 device=memory.patterns.device))

    def _stage_b_supervised(self, plain: dict[str, torch.Tensor], normal: torch.Tensor,
                            generator: torch.Generator) -> None:
        """Stage B, semi-supervised: the classifiers on every training row; with
        ``semi_score="combined"``, first the weight of their score beside the one-class one."""
        deltas = {s: self._difference(s, plain[s]) for s in self.scales_}
        self.mix_ = self._choose_mix(deltas, normal, generator) if self.semi_score == "combined" else {}
        self.classifiers_ = self._train_classifiers(deltas, normal, generator)

    def _train_classifiers(self, deltas: dict[str, torch.Tensor], normal: torch.Tensor,
                           generator: torch.Generator) -> torch.nn.ModuleDict:
        """Eq. 10-12: one classifier per scale on the rows of ``deltas`` (``z - HF(z)``)."""
        classifiers = torch.nn.ModuleDict()
        for s in self.scales_:
            _, n_positions, dim = deltas[s].shape
            classifiers[self._module_key(s)] = ScaleClassifier(dim, n_positions, self.sup_pool,
                                                               self.sup_hidden).to(normal.device)
        optimiser = torch.optim.AdamW(classifiers.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = len(normal)
        steps = self.sup_epochs * max(1, -(-n // self.batch_size))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        classifiers.train()
        for _ in range(self.sup_epochs):
            order = torch.randperm(n, generator=generator).to(normal.device)
            for start in range(0, n, self.batch_size):
                batch = order[start:start + self.batch_size]
                # Eq. 12: the double-hinge loss averaged over scales and samples.
                loss = sum(double_hinge(classifiers[self._module_key(s)](deltas[s][batch]), normal[batch],
                                        self.margin) for s in self.scales_) / len(self.scales_)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        classifiers.eval()
        return classifiers

    @torch.no_grad()
    def _classifier_score(self, classifiers: torch.nn.ModuleDict, deltas: dict[str, torch.Tensor]) -> np.ndarray:
        """Eq. 13 on the classifiers' outputs."""
        return self._weighted({s: classifiers[self._module_key(s)](deltas[s]).cpu().numpy().astype(np.float64)
                               for s in self.scales_})

    def _one_class_score(self, deltas: dict[str, torch.Tensor]) -> np.ndarray:
        """Eq. 9 and 13: the scale-weighted norms of ``z - HF(z)``."""
        return self._weighted({s: deltas[s].flatten(1).norm(dim=1).cpu().numpy().astype(np.float64)
                               for s in self.scales_})

    def _choose_mix(self, deltas: dict[str, torch.Tensor], normal: torch.Tensor,
                    generator: torch.Generator) -> dict:
        """The weight ``w`` of ``standardised one-class + w x standardised classifiers``, chosen
        among ``MIX_WEIGHTS`` by stratified ``MIX_FOLDS``-fold cross-validation on the training
        rows: each fold's classifiers are trained on the other folds and score the held-out rows;
        the weight whose held-out scores rank the labelled anomalies above the normal rows best
        (AUROC, ties to the smaller weight) is kept. The one-class score of the training rows is
        in-sample (stage A saw every normal row), which favours small weights: the head leans to
        the one-class score it would have without labels. The classifiers' score is standardised
        with its held-out normal rows (the final classifiers' outputs on their own training rows
        would be squeezed by the hinge), the one-class score with all normal training rows."""
        from sklearn.metrics import roc_auc_score

        is_normal = normal.cpu().numpy().astype(bool)
        one_class = self._one_class_score(deltas)
        one_class_scale = (float(one_class[is_normal].mean()), float(one_class[is_normal].std()) or 1.0)
        anomalies = np.flatnonzero(~is_normal)
        folds = min(MIX_FOLDS, len(anomalies))
        if folds < 2:
            return {"weight": 0.0, "one_class": one_class_scale, "classifier": (0.0, 1.0), "folds": folds,
                    "cv_auroc": {}}
        # Stratified folds: the normal and the anomalous rows each dealt out in a random order.
        fold_of = np.empty(len(is_normal), dtype=np.int64)
        for rows in (np.flatnonzero(is_normal), anomalies):
            order = torch.randperm(len(rows), generator=generator).numpy()
            fold_of[rows[order]] = np.arange(len(rows)) % folds
        held_out = np.empty(len(is_normal))
        for fold in range(folds):
            inside = torch.as_tensor(np.flatnonzero(fold_of != fold), device=normal.device)
            classifiers = self._train_classifiers({s: d[inside] for s, d in deltas.items()}, normal[inside], generator)
            rows = np.flatnonzero(fold_of == fold)
            held_out[rows] = self._classifier_score(classifiers, {s: d[rows] for s, d in deltas.items()})
        classifier_scale = (float(held_out[is_normal].mean()), float(held_out[is_normal].std()) or 1.0)
        cv_auroc = {}
        for weight in MIX_WEIGHTS:
            mixed = self._mix(one_class, held_out, {"weight": weight, "one_class": one_class_scale,
                                                    "classifier": classifier_scale})
            cv_auroc[weight] = float(roc_auc_score(~is_normal, mixed))
        best = max(cv_auroc.values())
        weight = min(w for w, auroc in cv_auroc.items() if auroc >= best - 1e-12)
        return {"weight": weight, "one_class": one_class_scale, "classifier": classifier_scale, "folds": folds,
                "cv_auroc": {str(w): round(a, 6) for w, a in cv_auroc.items()}}

    @staticmethod
    def _mix(one_class: np.ndarray, classifier: np.ndarray, mix: dict) -> np.ndarray:
        """``standardised one-class + weight x standardised classifiers`` (the classifiers alone
        for an infinite weight)."""
        (oc_mean, oc_std), (clf_mean, clf_std) = mix["one_class"], mix["classifier"]
        standard_classifier = (classifier - clf_mean) / clf_std
        if np.isinf(mix["weight"]):
            return standard_classifier
        return (one_class - oc_mean) / oc_std + mix["weight"] * standard_classifier

    # --- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def _difference(self, scale: str, z_in: torch.Tensor) -> torch.Tensor:
        """Eq. 8: ``z - HF(z)`` at every position."""
        self.projections_.eval()
        z = self._project(scale, z_in)
        return z - self.memories_[self._module_key(scale)](z)

    @torch.no_grad()
    def _per_scale(self, test: dict[str, np.ndarray], measure, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """``measure(scale, vectors)`` on each scale's test vectors (n, P, C), by chunks of
        rows, joined: a float64 array per scale with one value (or row) per image."""
        if not self.scales_:
            raise PipelineError("fit the AnoMem head before scoring")
        device = next(self.memories_.parameters()).device
        self.projections_.eval()
        out = {}
        for s in self.scales_:
            if s not in test:
                raise PipelineError(f"the test features lack scale {s!r} the head was trained with.")
            data = positions(test[s])
            parts = [measure(s, data[start:start + batch_size].to(device)) for start in range(0, len(data), batch_size)]
            out[s] = torch.cat(parts).cpu().numpy().astype(np.float64)
        return out

    def scale_scores(self, test: dict[str, np.ndarray], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Per scale anomaly distance: ||z - HF(z)|| (one-class) or the scale's MLP output."""
        def distance(scale: str, vectors: torch.Tensor) -> torch.Tensor:
            delta = self._difference(scale, vectors)
            key = self._module_key(scale)
            return self.classifiers_[key](delta) if key in self.classifiers_ else delta.flatten(1).norm(dim=1)

        return self._per_scale(test, distance, batch_size)

    def _weighted(self, per_scale: dict[str, np.ndarray]) -> np.ndarray:
        """Eq. 13: the scale scores' average weighted by lambda_s."""
        return sum(self.weights_[s] * per_scale[s] for s in self.scales_) / sum(self.weights_.values())

    def score_samples(self, features: Features | dict[str, np.ndarray]) -> np.ndarray:
        """Eq. 13 on the per-scale scores (``scale_scores``); with classifiers and
        ``semi_score="combined"``, their score mixed with the one-class one (``_choose_mix``)."""
        test = Features.of(features).scales()
        if not self.classifiers_ or not self.mix_:
            return self._weighted(self.scale_scores(test))

        def both(scale: str, vectors: torch.Tensor) -> torch.Tensor:
            delta = self._difference(scale, vectors)
            return torch.stack([delta.flatten(1).norm(dim=1), self.classifiers_[self._module_key(scale)](delta)], 1)

        per_scale = self._per_scale(test, both)
        one_class = self._weighted({s: v[:, 0] for s, v in per_scale.items()})
        classifier = self._weighted({s: v[:, 1] for s, v in per_scale.items()})
        return self._mix(one_class, classifier, self.mix_)

    # --- controls (graded and recorded by the evaluation, pipeline.evaluate) ------------------

    def control_scores(self, features: Features | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Two scores built like the one-class score (the L2 norm over a scale's positions,
        then eq. 13's weights) with the recollection taken out: ``norm``, ||z|| alone (the
        projection's output before any normalisation, no memory); ``nearest_slot``, the
        distance to the nearest slot (the recollection of an infinite beta). If the head's
        score grades like ``norm``, the memory adds nothing."""
        test = Features.of(features).scales()

        def norm(scale: str, vectors: torch.Tensor) -> torch.Tensor:
            return self.projections_[self._module_key(scale)](vectors).flatten(1).norm(dim=1)

        def nearest_slot(scale: str, vectors: torch.Tensor) -> torch.Tensor:
            distance = self.memories_[self._module_key(scale)].nearest_distance(self._project(scale, vectors))
            return distance.norm(dim=1)

        return {"norm": self._weighted(self._per_scale(test, norm)),
                "nearest_slot": self._weighted(self._per_scale(test, nearest_slot))}

    def diagnostics(self, features: Features | dict[str, np.ndarray]) -> dict[str, float]:
        """How peaked the retrieval softmax is on these images, per scale (``intermediate``,
        ``last``), averaged over images and positions: ``retrieval_entropy_<scale>``, its
        entropy over the log of the number of slots (1: flat, all slots alike; 0: one slot),
        and ``retrieval_top_weight_<scale>``, its largest weight. Reads no labels. A
        semi-supervised head with the combined score adds ``semi_weight``, the classifiers'
        weight its cross-validation chose (``inf``: the classifiers alone, stated as 1e9)."""
        test = Features.of(features).scales()

        def softmax_of(scale: str, vectors: torch.Tensor) -> torch.Tensor:
            weights = self.memories_[self._module_key(scale)].weights(self._project(scale, vectors))
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1) / max(np.log(weights.shape[-1]), 1e-12)
            return torch.stack([entropy.mean(1), weights.max(-1).values.mean(1)], dim=1)

        out = {}
        for s, values in self._per_scale(test, softmax_of).items():
            role = "last" if s == POOLED else "intermediate"
            out[f"retrieval_entropy_{role}"] = float(values[:, 0].mean())
            out[f"retrieval_top_weight_{role}"] = float(values[:, 1].mean())
        if self.classifiers_ and self.mix_:
            out["semi_weight"] = min(float(self.mix_["weight"]), 1e9)  # JSON has no infinity
        return out

    # --- saving (pipeline.heads.saving) -------------------------------------------------------

    def _state(self) -> dict:
        """Config, scales and weights, and the projections, memories and classifiers: all that
        scoring needs (plain tensors, so the file loads with weights_only=True)."""
        if not self.scales_:
            raise PipelineError("fit the AnoMem head before saving it")

        def on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}

        return {"config": self.params(), "scales": list(self.scales_), "weights": dict(self.weights_),
                "in_dims": {s: int(self.projections_[self._module_key(s)].mean.shape[0]) for s in self.scales_},
                "positions": {s: int(self.classifiers_[self._module_key(s)].grid ** 2) for s in self.scales_
                              if self._module_key(s) in self.classifiers_},
                "projections": on_cpu(self.projections_), "memories": on_cpu(self.memories_),
                "classifiers": on_cpu(self.classifiers_), "mix": self._mix_state()}

    def _mix_state(self) -> dict:
        """``mix_`` in plain numbers (the weight as a string: JSON and weights_only loads keep "inf")."""
        if not self.mix_:
            return {}
        return {"weight": str(self.mix_["weight"]), "one_class": [float(v) for v in self.mix_["one_class"]],
                "classifier": [float(v) for v in self.mix_["classifier"]], "folds": int(self.mix_["folds"]),
                "cv_auroc": dict(self.mix_["cv_auroc"])}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "AnoMemHead":
        head = cls(**{**LEGACY_PARAMS, **state["config"], "device": device})
        head.scales_, head.weights_ = list(state["scales"]), dict(state["weights"])
        for s in head.scales_:
            key = head._module_key(s)
            head.projections_[key] = head._new_projection(state["in_dims"][s])
            slots = state["memories"][f"{key}.patterns"].shape[0]  # k-means may have kept fewer
            head.memories_[key] = HopfieldMemory(slots, head.projections_[key].out_dim, head.beta, head.hopfield_steps,
                                                 normalise=head.retrieval == "cosine")
            if s in state["positions"]:
                head.classifiers_[key] = ScaleClassifier(head.projections_[key].out_dim, state["positions"][s],
                                                        head.sup_pool, head.sup_hidden)
        head.projections_.load_state_dict(state["projections"])
        head.memories_.load_state_dict(state["memories"])
        head.classifiers_.load_state_dict(state["classifiers"])
        mix = state.get("mix") or {}
        head.mix_ = {**mix, "weight": float(mix["weight"]), "one_class": tuple(mix["one_class"]),
                     "classifier": tuple(mix["classifier"])} if mix else {}
        for modules in (head.projections_, head.memories_, head.classifiers_):
            modules.to(device).eval()
        return head

    def footprint(self) -> dict[str, int]:
        """Numbers the head keeps for scoring: memory slots x dims, and all parameters."""
        memory = sum(m.patterns.numel() for m in self.memories_.values())
        params = sum(p.numel() for p in self.projections_.parameters()) + memory
        params += sum(p.numel() for p in self.classifiers_.parameters())
        return {"memory_values": int(memory), "head_values": int(params)}


HEAD = AnoMemHead
