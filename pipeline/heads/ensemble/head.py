"""Ensemble head: one member head per cache of the same images (several backbones, several image
sizes), each member's score standardised by the mean and standard deviation of its scores of
the normal training images, the standardised scores summed.

    head = EnsembleHead(member="gaussian", member_settings=("scales=multi", "combine=sum"))
    head.fit(join([lite0_train, lite1_train, lite2_train]))     # Features of each cache, same rows
    scores = head.score_samples(join([lite0_test, lite1_test, lite2_test]))

Why a head, and where the caches meet. The project has one data path, cache -> head -> scores,
and heads read arrays, never images, and know no store. So the ensemble is a head whose input
is one ``Features`` holding every cache's features of the same rows (``join``): the first
cache's pooled vectors as ``pooled``, and under ``member<i>/`` in ``maps`` (and ``trunk``) the
other caches' pooled vectors (``member<i>/pooled``) and every cache's maps. The stage
(``pipeline/commands/ensemble.py``) reads the caches through one view of them, after refusing
caches that are not of the same images in the same order, and runs the one evaluation loop
(``pipeline.evaluate``): per task it fits this head on the task's training rows of every cache,
scores the test set and grades it with the same metrics code as every head. The store knows no
head and no other cache; the member head knows nothing of the ensemble.

Standardising. The sum is ``sum_i (s_i - m_i) / sd_i``; the shifts m_i do not change a ranking,
the spreads sd_i are the members' weights, so what matters is that sd_i is the spread of the
member's scores of new normal images, whatever the member's units (a squared Mahalanobis
distance runs near the dimension, a kNN distance near the squared feature norm).

- ``cross-fit`` (default): the training images in ``folds`` folds (image i in fold i mod folds);
  each fold scored by the member fitted on the other folds; m_i and sd_i of those held-out
  scores. In-sample scores are not those of new images: a Gaussian fitted on N images in D
  dimensions scores its own images lower and more narrowly than new ones, the more so as D
  nears N (1,280-d features of 1,000 CIFAR-10 images a class), and by a factor that differs
  between members of different D, which would reweight the sum. Cross-fitting costs ``folds``
  more fits of each member.
- ``training``: the member's own training scores (``Head.training_scores``: in-sample for the
  Gaussian, leave-one-out for kNN, whose in-sample scores would be 0): no extra fit.
- ``none``: the raw scores summed (for comparison).

A member whose reference scores do not vary (sd 0) is only centred. The members are fitted on
the full training rows in every mode; ``threshold_`` is a quantile of the ensemble's scores of
its training images, the cross-fitted ones under ``cross-fit`` (``training_scores``), the
members' own training scores otherwise. Each member's standardised score is a control score
(``member0``, ``member1``, ...), so a run's metrics hold every member's AUROC from the same
fits, and its spread a diagnostic (``member<i>_spread``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.declare import specs
from pipeline.errors import PipelineError
from pipeline.heads.base import POOLED, EpochCallback, Features, Head
from pipeline.heads.ensemble.settings import MEMBER_CHOICES, EnsembleParams
from pipeline.heads.registry import head_class, settings_module

PREFIX = "member"  # member i's arrays are under "member<i>/<name>" in Features.maps and .trunk


def prefix(index: int) -> str:
    return f"{PREFIX}{index}/"


class RowsMemo:
    """A value computed from one array of rows, given back only for that very array. It holds the
    array weakly (it neither keeps the rows alive nor is pickled) and forgets rows that cannot
    be weakly referenced, which are then computed again."""

    def __init__(self) -> None:
        self._rows: weakref.ref | None = None
        self._value: Any = None

    def get(self, rows: Any) -> Any:
        return self._value if self._rows is not None and self._rows() is rows else None

    def put(self, rows: Any, value: Any) -> None:
        try:
            self._rows, self._value = weakref.ref(rows), value
        except TypeError:
            self._rows, self._value = None, None


def join(members: Sequence[Features | np.ndarray | Any]) -> Features:
    """Several caches' Features of the same rows as the one Features the ensemble head reads:
    the first's pooled vectors as ``pooled``; ``member<i>/pooled`` (i >= 1) and ``member<i>/<map>``
    in ``maps``, ``member<i>/<stage>`` in ``trunk``. Augmented views are not carried."""
    members = [Features.of(m) for m in members]
    if not members:
        raise PipelineError("an ensemble needs the features of at least one cache.")
    rows = len(members[0])
    maps: dict[str, Any] = {}
    trunk: dict[str, Any] = {}
    for i, member in enumerate(members):
        if len(member) != rows:
            raise PipelineError(f"the caches' features are not of the same images: {rows} rows in the first, "
                                f"{len(member)} in member {i}.")
        if i:
            maps[f"{prefix(i)}{POOLED}"] = member.pooled
        maps.update({f"{prefix(i)}{name}": value for name, value in member.maps.items()})
        trunk.update({f"{prefix(i)}{name}": value for name, value in member.trunk.items()})
    return Features(members[0].pooled, maps, None, trunk)


def split(features: Features | np.ndarray | Any) -> list[Features]:
    """The members' Features, from the joined Features (``join``); Features with no member
    arrays are one member, as they are."""
    features = Features.of(features)
    keys = [*features.maps, *features.trunk]
    tagged = [key for key in keys if key.startswith(PREFIX) and "/" in key]
    if not tagged:
        return [features]
    numbers = set()
    for key in tagged:
        number = key[len(PREFIX):key.index("/")]
        if not number.isdigit():
            raise PipelineError(f"the ensemble's features hold {key!r}: member arrays are named member<i>/<name>.")
        numbers.add(int(number))
    count = max(numbers | {0}) + 1
    members = []
    for i in range(count):
        tag = prefix(i)
        pooled = features.pooled if i == 0 else features.maps.get(f"{tag}{POOLED}")
        if pooled is None:
            raise PipelineError(f"the ensemble's features lack {tag}{POOLED}, the pooled vectors of member {i} "
                                f"(members {', '.join(map(str, sorted(numbers)))} have arrays).")
        maps = {k[len(tag):]: v for k, v in features.maps.items() if k.startswith(tag) and k != f"{tag}{POOLED}"}
        trunk = {k[len(tag):]: v for k, v in features.trunk.items() if k.startswith(tag)}
        members.append(Features(pooled, maps, None, trunk))
    return members


def member_arguments(member: str, settings: Sequence[str]) -> dict[str, Any]:
    """The member head's arguments from KEY=VALUE texts, each checked as its declaration says
    (a list value's items separated by ';')."""
    declared = specs(settings_module(member).PARAMS)
    arguments: dict[str, Any] = {}
    for text in settings:
        key, equals, value = str(text).partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise PipelineError(f"member setting {text!r} is not KEY=VALUE (e.g. scales=multi).")
        if key not in declared:
            raise PipelineError(f"the {member} head has no parameter {key!r}; it has: {', '.join(declared)}.")
        if key in arguments:
            raise PipelineError(f"member setting {key} is given twice.")
        arguments[key] = declared[key].parse(value.replace(";", ","), key)
    return arguments


@dataclass(frozen=True)
class Member:
    """A fitted member head and the location and spread its scores are standardised by."""

    head: Head
    location: float
    spread: float

    def standardised(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.location) / self.spread


def location_and_spread(scores: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (1 where the scores do not vary) of reference scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores) or not np.isfinite(scores).all():
        raise PipelineError(f"cannot standardise a member: its {len(scores)} reference scores are empty or not all "
                            f"finite.")
    spread = float(scores.std())
    return float(scores.mean()), spread if spread > 0 else 1.0


def folds_of(n: int, folds: int) -> list[np.ndarray]:
    """Row positions of each fold: row i in fold i mod folds (no randomness; the rows of a
    class come in file order, so every fold spans the class)."""
    return [np.arange(fold, n, folds) for fold in range(min(folds, n))]


@dataclass(eq=False, repr=False, kw_only=True)
class EnsembleHead(EnsembleParams, Head):
    """One member head per cache; scores are the sum of the members' standardised scores. Its
    parameters are declared in ``settings.py``."""

    name = "ensemble"
    training_note = ("the sum of the members' standardised scores of the training images (cross-fitted under "
                     "standardise cross-fit, else the members' own training scores)")

    # Every member after the first comes as maps (member<i>/pooled), whatever the member reads.
    needs_maps = True

    @property
    def needs_trunk(self) -> bool:  # the base class's flag, per instance: the member's
        return bool(self._prototype().needs_trunk)

    @property
    def needs_views(self) -> bool:
        return bool(self._prototype().needs_views)

    def _prototype(self) -> Head:
        """An unfitted member head with the member settings."""
        if self.member not in MEMBER_CHOICES:
            raise PipelineError(f"the ensemble's member must be one of {', '.join(MEMBER_CHOICES)}, not "
                                f"{self.member!r}.")
        return head_class(self.member)(**member_arguments(self.member, self.member_settings))

    def _check_params(self) -> None:
        super()._check_params()
        prototype = self._prototype()
        prototype._check_params()  # a bad member setting costs nothing

    # --- fit ------------------------------------------------------------------------------

    def _member(self, part: Features, threshold_quantile: float | None = None) -> Head:
        head = self._prototype().set_params(threshold_quantile=threshold_quantile)
        return head.fit(part)

    def _cross_fitted(self, part: Features) -> np.ndarray:
        """Each training row scored by the member fitted without its fold."""
        scores = np.empty(len(part), dtype=np.float64)
        for held in folds_of(len(part), self.folds):
            kept = np.setdiff1d(np.arange(len(part)), held)
            if len(kept) < 2:
                raise PipelineError(f"cross-fitting needs at least 2 training images besides each fold: "
                                    f"{len(part)} images in {self.folds} folds.")
            scores[held] = self._member(part.take(kept)).score_samples(part.take(held))
        return scores

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        # What this fit computed for its training rows, and the last rows scored.
        self._training_total, self._member_scores = RowsMemo(), RowsMemo()
        members, references = [], []
        for part in split(features):
            if self.standardise == "cross-fit":
                head, scores = self._member(part), self._cross_fitted(part)
            elif self.standardise == "training":
                # Fitted with a threshold quantile, the member computes its own training scores once.
                head = self._member(part, 0.5)
                scores = head.train_scores_
            else:
                head, scores = self._member(part), None
            location, spread = (0.0, 1.0) if scores is None else location_and_spread(scores)
            members.append(Member(head, location, spread))
            references.append(scores)
        self.members_ = members
        if all(scores is not None for scores in references):  # the threshold's reference, computed already
            total = np.sum([m.standardised(s) for m, s in zip(members, references)], axis=0)
            self._training_total.put(features.pooled, total)

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The ensemble's scores of its training images: the sum of the members' standardised
        cross-fitted scores under ``cross-fit``, else of their own training scores (computed in
        ``fit`` for the very rows it was fitted on, else here)."""
        features = Features.of(features)
        total = self._memo("_training_total").get(features.pooled)
        if total is not None and len(total) == len(features):
            return total
        parts = self._parts(features)
        if self.standardise == "cross-fit":
            return np.sum([m.standardised(self._cross_fitted(p)) for m, p in zip(self.members_, parts)], axis=0)
        return np.sum([m.standardised(m.head.training_scores(p)) for m, p in zip(self.members_, parts)], axis=0)

    # --- score ----------------------------------------------------------------------------

    def _parts(self, features: Features) -> list[Features]:
        if not hasattr(self, "members_"):
            raise PipelineError("fit the ensemble head before scoring")
        parts = split(features)
        if len(parts) != len(self.members_):
            raise PipelineError(f"the ensemble head was fitted on {len(self.members_)} caches' features, these hold "
                                f"{len(parts)}.")
        return parts

    def member_scores(self, features: Features | np.ndarray | Any) -> list[np.ndarray]:
        """Each member's standardised scores (remembered, weakly, for the control scores of the
        same rows)."""
        features = Features.of(features)
        scores = self._memo("_member_scores").get(features.pooled)
        if scores is None:
            scores = [m.standardised(m.head.score_samples(p)) for m, p in zip(self.members_, self._parts(features))]
            self._memo("_member_scores").put(features.pooled, scores)
        return scores

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        return np.asarray(np.sum(self.member_scores(features), axis=0), dtype=np.float64)

    def control_scores(self, features: Features | np.ndarray | Any) -> dict[str, np.ndarray]:
        """Each member's standardised score alone (graded like the ensemble's), when there are
        several."""
        scores = self.member_scores(features)
        return {f"member{i}": s for i, s in enumerate(scores)} if len(scores) > 1 else {}

    def diagnostics(self, features: Features | np.ndarray | Any) -> dict[str, float]:
        """Each member's location and spread (its weight is 1 / spread)."""
        return {f"member{i}_{what}": value for i, m in enumerate(self.members_)
                for what, value in (("location", m.location), ("spread", m.spread))}

    _MEMOS = ("_training_total", "_member_scores")

    def _memo(self, name: str) -> RowsMemo:
        """One of the memos (a fresh one for a head made by loading or unpickling)."""
        return self.__dict__.setdefault(name, RowsMemo())

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        for name in self._MEMOS:  # weak references (not picklable)
            state.pop(name, None)
        return state

    # --- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self, **options: Any) -> dict:
        """The parameters and, per member, its own state (``options`` go to each member's
        ``_state``: kNN's gallery_dtype), location and spread."""
        if not hasattr(self, "members_"):
            raise PipelineError("fit the ensemble head before saving it")
        members = [{"state": m.head._state(**options), "location": m.location, "spread": m.spread}
                   for m in self.members_]
        return {"member": self.member, "member_settings": list(self.member_settings), "standardise": self.standardise,
                "folds": self.folds, "feature_dim": members[0]["state"].get("feature_dim"),  # the first cache's pooled
                "members": members}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "EnsembleHead":
        head = cls(member=str(state["member"]), member_settings=tuple(str(s) for s in state["member_settings"]),
                   standardise=str(state["standardise"]), folds=int(state["folds"]))
        member_cls = head_class(head.member)
        head.members_ = [Member(member_cls._from_state(m["state"], device=device), float(m["location"]),
                                float(m["spread"])) for m in state["members"]]
        return head


HEAD = EnsembleHead
