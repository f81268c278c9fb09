"""Saved heads: a fitted head in one file, with the cache it was trained on and a threshold.

    save_head("heads/cat.head", head, class_name="cat", cache=cache)   # or head.save(...)
    saved = loading.load_head("heads/cat.head")
    flags = saved.score(features) > saved.threshold

File format: one ``torch.save`` file holding only tensors and plain containers, read back with
``torch.load(weights_only=True)``::

    {"format": "frozen-feature-ad head", "format_version": 1, "kind": "knn",
     "info": "<JSON: class name, the cache's metadata, threshold and how it was chosen, versions>",
     "state": head._state(),              # tensors + JSON-able parameters
     "train_scores": float64 tensor}      # so the threshold can be re-chosen at another quantile

Why this and not JSON + .npz: one file is replaced atomically by one ``os.replace`` (a pair
cannot be: a crash between the two writes leaves a head beside another head's metadata);
state_dicts are tensors already, so nothing is converted; and ``weights_only=True`` unpickles
no classes, so loading a head file from elsewhere runs no code. The metadata is kept as one
JSON string so it reads back exactly as the cache recorded it.

The kind is the head's ``name``; ``pipeline.heads.registry`` finds its class to load it.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from pipeline.store.cache import FeatureCache, library_versions
from pipeline.cli import safe_filename
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.heads.base import Head

FORMAT = "frozen-feature-ad head"
FORMAT_VERSION = 1
SUFFIX = ".head"
DEFAULT_QUANTILE = 0.95


@dataclass
class SavedHead:
    """A loaded head and what it was trained on."""

    head: Any
    kind: str
    class_name: str
    cache_metadata: dict  # backbone, weights, preprocessing, dataset, feature dtype and maps
    threshold: float
    threshold_quantile: float
    threshold_rule: str  # how the threshold was chosen, in words
    train_scores: np.ndarray
    feature_dim: int | None = None
    cache_path: str | None = None
    path: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def backbone(self) -> dict:
        return dict(self.cache_metadata.get("backbone", {}))

    @property
    def preprocessing(self) -> dict:
        return dict(self.cache_metadata.get("preprocessing", {}))

    @property
    def maps(self) -> dict:
        return dict(self.cache_metadata.get("features", {}).get("maps", {}))

    def threshold_at(self, quantile: float) -> float:
        """The threshold had it been chosen at another quantile of the same training scores."""
        return float(np.quantile(self.train_scores, _check_quantile(quantile)))

    @property
    def multi_scale(self) -> bool:
        """Whether the head also reads the cache's intermediate maps (AnoMem) or trunk map (PANDA)."""
        return self.head.needs_maps or self.head.needs_trunk

    def score(self, features: np.ndarray, maps: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Scores of pooled ``features`` (N, D), with the cache's intermediate ``maps`` (and
        ``trunk/<stage>`` maps) for a head that reads them."""
        return np.asarray(self.head.score_samples({"pooled": features, **(maps or {})}), dtype=np.float64)


def head_filename(class_name: str) -> str:
    """``<class>.head``, the name made safe for any filesystem (imagefolder class names are free
    text) and distinct for distinct classes."""
    return safe_filename(class_name, SUFFIX)


def _quantile_for(head: Head, given: float | None) -> float:
    """The quantile asked for, else the head's own, else the default."""
    for quantile in (given, head.threshold_quantile):
        if quantile is not None:
            return quantile
    return DEFAULT_QUANTILE


def _check_quantile(quantile: float) -> float:
    if not 0.0 <= float(quantile) <= 1.0:
        raise PipelineError(f"the threshold quantile must lie between 0 and 1, got {quantile}.")
    return float(quantile)


def _plain(value: Any, where: str) -> Any:
    """Arrays to tensors and NumPy scalars to Python ones; refuse anything weights_only cannot load."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (torch.Tensor, str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}; to_state() must return tensors, arrays or "
                    f"JSON-able values (a head file is read with weights_only=True).")


def _cache_record(cache: FeatureCache | Mapping, cache_path: str | None) -> tuple[dict, str | None]:
    if isinstance(cache, Mapping):
        return json.loads(json.dumps(dict(cache))), cache_path
    return cache.metadata, cache_path or str(cache.path)


def _write(path: str | Path, head: Head, state: dict, *, class_name: str, cache: FeatureCache | Mapping,
           cache_path: str | None, threshold_quantile: float, train_scores: Any) -> Path:
    path = Path(path)
    quantile = _check_quantile(threshold_quantile)
    scores = np.asarray(train_scores, dtype=np.float64).ravel()
    if not len(scores) or not np.isfinite(scores).all():
        raise PipelineError(f"cannot choose a threshold for {class_name}: its {len(scores)} training scores are "
                            f"empty or not all finite.")
    metadata, recorded_path = _cache_record(cache, cache_path)
    info = {"class_name": str(class_name), "cache": metadata, "cache_path": recorded_path,
            "feature_dim": state.get("feature_dim"),
            "threshold": {"value": float(np.quantile(scores, quantile)), "quantile": quantile,
                          "rule": f"{quantile:g}-quantile (numpy linear) of the {len(scores)} "
                                  f"{head.training_note}, class {class_name}; "
                                  f"score > threshold = anomalous",
                          "n_train": len(scores)},
            "saved": {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": library_versions()}}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": head.name, "info": json.dumps(info),
               "state": _plain(state, f"the {head.name} state"), "train_scores": torch.from_numpy(scores)}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a file; the process
    # id keeps two writers (Dask workers) from sharing a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_head(path: str | Path, head: Head, *, class_name: str, cache: FeatureCache | Mapping,
              threshold_quantile: float | None = None, train_scores: Any = None, cache_path: str | None = None,
              **state_options: Any) -> Path:
    """Write the fitted ``head`` to ``path`` atomically. ``cache`` is the FeatureCache it was
    trained on (or that cache's metadata); ``train_scores`` its scores on its training features
    (default: those ``fit`` kept), whose ``threshold_quantile`` quantile (default: the head's)
    is the threshold. ``state_options`` go to ``_state`` (kNN: ``gallery_dtype="float32"``)."""
    if train_scores is None:
        train_scores = getattr(head, "train_scores_", None)
        if train_scores is None:
            raise PipelineError(f"the {head.name} head has no training scores to take a threshold from: fit it "
                                f"with threshold_quantile set, or pass train_scores.")
    return _write(path, head, head._state(**state_options), class_name=class_name, cache=cache,
                  cache_path=cache_path, threshold_quantile=_quantile_for(head, threshold_quantile),
                  train_scores=train_scores)


def save_trained_head(path: str | Path, head: Head, *, class_name: str, cache: FeatureCache | Mapping,
                      train_features: Any, threshold_quantile: float | None = None, device: str = "cpu",
                      cache_path: str | None = None, **state_options: Any) -> Path:
    """``save_head`` with the training scores computed by the head rebuilt from the state being
    saved: the threshold then fits the head exactly as it will be loaded (a kNN gallery saved
    in float16 included)."""
    state = head._state(**state_options)
    restored = type(head)._from_state(_plain(state, f"the {head.name} state"), device=device)
    scores = restored.training_scores(train_features)
    return _write(path, head, state, class_name=class_name, cache=cache, cache_path=cache_path,
                  threshold_quantile=_quantile_for(head, threshold_quantile), train_scores=scores)



def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def read_head_file(path: str | Path, head_class: Callable[[str], type], device: str = "cpu") -> SavedHead:
    """Read a head file, its class found by ``head_class(kind)`` (``loading.load_head`` for any
    kind, ``Head.load`` for its own); every problem is a PipelineError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"no saved head at {path}. Save heads with python -m stages.knn (or stages.plume, "
                            f"stages.anomem) --save-heads DIR, which writes DIR/<class>{SUFFIX}.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else would be unpickled
        raise PipelineError(f"{path} is not a readable head file (not a torch.save archive); head files are "
                            f"written by --save-heads of python -m stages.knn or stages.plume.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # Also a file holding pickled classes: weights_only refuses to run their code.
        raise PipelineError(f"{path} is not a readable head file ({_first_line(error)}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a head saved by this project (no {FORMAT!r} marker); save one with "
                            f"--save-heads of python -m stages.knn or stages.plume.")
    if payload.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path} has head format {payload.get('format_version')}; this version reads format "
                            f"{FORMAT_VERSION}. Save the head again with this version.")
    kind = payload.get("kind")
    cls = head_class(kind)
    try:
        info = json.loads(payload["info"])
        head = cls._from_state(payload["state"], device=device)
        scores = torch.as_tensor(payload["train_scores"]).double().numpy()
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"{path}: its {kind} head cannot be restored ({_first_line(error)}); the file is "
                            f"damaged or was written by an incompatible version.") from None
    threshold = info["threshold"]
    head.threshold_, head.train_scores_ = float(threshold["value"]), scores
    return SavedHead(head=head, kind=kind, class_name=info["class_name"], cache_metadata=info["cache"],
                     threshold=float(threshold["value"]), threshold_quantile=float(threshold["quantile"]),
                     threshold_rule=threshold["rule"], train_scores=scores, feature_dim=info.get("feature_dim"),
                     cache_path=info.get("cache_path"), path=path, info=info)


@dataclass
class HeadSaver:
    """The ``after_fit`` hook of the head stages: saves each task's head as DIR/<name>.head
    right after it is trained (one-vs-all: DIR/<class>.head; normal-vs-anomalies:
    DIR/<normal class>.head). Plain fields, so it pickles: with ``--scheduler`` it travels
    with the jobs and the worker that trains a class writes that class's file."""

    directory: str
    kind: str
    cache_path: str
    cache_metadata: dict
    threshold_quantile: float = DEFAULT_QUANTILE
    device: str = "cpu"
    state_options: dict = field(default_factory=dict)

    @classmethod
    def for_cache(cls, directory: str | Path, kind: str, cache: FeatureCache, **kwargs: Any) -> "HeadSaver":
        _check_quantile(kwargs.get("threshold_quantile", DEFAULT_QUANTILE))
        # Absolute paths: with --scheduler the saver travels to workers started elsewhere.
        return cls(str(Path(directory).resolve()), kind, str(Path(cache.path).resolve()), cache.metadata, **kwargs)

    def path_for(self, class_name: str) -> Path:
        return Path(self.directory) / head_filename(class_name)

    def __call__(self, name: str, head: Head, train_features: Any) -> None:
        save_trained_head(self.path_for(name), head, class_name=name, cache=self.cache_metadata,
                          cache_path=self.cache_path, train_features=train_features,
                          threshold_quantile=self.threshold_quantile, device=self.device, **self.state_options)


def saved_heads_note(saver: HeadSaver, class_names: list[str]) -> str:
    """The line a head stage prints after saving: where the files are and how to use one."""
    files = [saver.path_for(name) for name in class_names]
    shown = ", ".join(f.name for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    plural = "s" if len(files) != 1 else ""
    return (f"saved {len(files)} {saver.kind} head{plural} in {saver.directory} ({shown}); score new images "
            f"with python -m stages.score --head {files[0]} --images FOLDER --out scores.csv")
