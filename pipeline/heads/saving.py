"""Saved heads: a fitted head in one file, with the cache it was trained on and a threshold.

    save_head("heads/cat.head", head, class_name="cat", cache=cache)   # or head.save(...)
    saved = loading.load_head("heads/cat.head")
    flags = saved.score(features) > saved.threshold

File format: one ``torch.save`` file holding only tensors and plain containers, read back with
``torch.load(weights_only=True)``::

    {"format": "frozen-feature-ad head", "format_version": 2, "kind": "knn",
     "info": "<JSON: class name, the cache's metadata, threshold and how it was chosen, versions>",
     "state": head._state(),              # tensors + JSON-able parameters
     "train_scores": float64 tensor,      # so the threshold can be re-chosen at another quantile
     "sha256": "<hex>"}                   # of everything above (``payload_digest``)

Like a feature cache's chunks and metadata (``pipeline.store.cache``), a head file is checked
when it is read: the SHA-256 of its contents first (a flipped bit, a threshold edited by hand:
torch.load itself checks nothing, and a damaged tensor would score silently), then every
field of ``info`` and the training scores against ``INFO_FIELDS``. Any failure is one
PipelineError naming the file and the field, never a traceback and never a score.

Why this and not JSON + .npz: one file is replaced atomically by one ``os.replace`` (a pair
cannot be: a crash between the two writes leaves a head beside another head's metadata);
state_dicts are tensors already, so nothing is converted; and ``weights_only=True`` unpickles
no classes, so loading a head file from elsewhere runs no code. The metadata is kept as one
JSON string so it reads back exactly as the cache recorded it.

The kind is the head's ``name``; ``pipeline.heads.registry`` finds its class to load it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click
import numpy as np
import torch

from pipeline.store.cache import FeatureCache
from pipeline.store.metadata import library_versions, metadata_problem
from pipeline.files import safe_filename
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.heads.base import Head

FORMAT = "frozen-feature-ad head"
FORMAT_VERSION = 2  # 2: the file carries the SHA-256 of its contents
# Version 1 files (saved before the checksum) are still read, with a warning on stderr that they
# cannot be verified, rather than refused: every field of them is still checked (a NaN or
# mistyped threshold is refused all the same), a v1 file is no less trustworthy today than when
# it was scored yesterday, and refusing would throw away every head saved so far, some of them
# hours of GPU training (PLUME, PANDA), when saving it again needs the cache and a new fit.
# The warning says how to get a checked file. This is what the feature caches do with stores
# made before their metadata checksum (``FeatureCache.metadata_checked``).
READABLE_VERSIONS = (1, FORMAT_VERSION)
CHECKSUM = "sha256"
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

    def anomaly_maps(self, features: np.ndarray, maps: dict[str, np.ndarray] | None = None,
                     size: int | None = None) -> np.ndarray:
        """Anomaly maps (N, size, size) float32 of the same inputs as ``score``, for a head that
        localises (``head.localises``; others refuse), at ``size`` (default: the image size
        the training cache records), checked to be of that shape."""
        size = int(self.preprocessing.get("image_size", 0) if size is None else size)
        if size <= 0:
            raise PipelineError(f"the head {self.path} records no image size to make anomaly maps at.")
        result = np.asarray(self.head.anomaly_maps({"pooled": features, **(maps or {})}, size), dtype=np.float32)
        if result.shape != (len(features), size, size):
            raise PipelineError(f"the {self.kind} head made anomaly maps of shape {result.shape} for {len(features)} "
                                f"images at {size} pixels; expected {(len(features), size, size)}.")
        return result


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


# --- the checksum ---------------------------------------------------------------------------

def _feed(digest: Any, tag: bytes, data: bytes) -> None:
    digest.update(tag + len(data).to_bytes(8, "little") + data)


def _feed_value(digest: Any, value: Any, where: str) -> None:
    """One value, canonically: a tensor as its dtype, shape and bytes; a mapping's entries in
    key order; every item tagged and length-prefixed, so two different contents never feed
    the same bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.layout != torch.strided:
            raise TypeError(f"{where} is a {tensor.layout} tensor")
        _feed(digest, b"T", f"{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())  # its length follows from dtype and shape
    elif isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{where} has a key that is not a text")
        _feed(digest, b"D", str(len(value)).encode())
        for key in sorted(value):
            _feed(digest, b"K", key.encode("utf-8", "surrogatepass"))
            _feed_value(digest, value[key], f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        _feed(digest, b"L", str(len(value)).encode())
        for i, item in enumerate(value):
            _feed_value(digest, item, f"{where}[{i}]")
    elif isinstance(value, str):
        _feed(digest, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bool):
        _feed(digest, b"B", b"1" if value else b"0")
    elif isinstance(value, int):
        _feed(digest, b"I", str(value).encode())
    elif isinstance(value, float):
        _feed(digest, b"F", value.hex().encode())
    elif value is None:
        _feed(digest, b"N", b"")
    elif isinstance(value, bytes):
        _feed(digest, b"Y", value)
    else:
        raise TypeError(f"{where} is a {type(value).__name__}")


def payload_digest(payload: Mapping) -> str:
    """SHA-256 of a head file's contents: every entry but the checksum itself, canonically (each
    tensor's dtype, shape and bytes, entries in key order, plain values; ``info`` as the JSON
    text it is stored as). Raises TypeError for a value no head file holds."""
    digest = hashlib.sha256()
    _feed_value(digest, {key: value for key, value in payload.items() if key != CHECKSUM}, "the file")
    return digest.hexdigest()


def seal(payload: dict) -> dict:
    """``payload`` with its checksum recorded (what ``_write`` saves)."""
    payload[CHECKSUM] = payload_digest(payload)
    return payload


# --- what info holds ------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_number(value) and isinstance(value, int) and value > 0


# Each field of a head file's info (dotted: a key of a mapping), what it must be, in words.
# Read in this order, so a mapping is checked before its keys.
INFO_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "class_name": (lambda v: isinstance(v, str), "a text (the class name)"),
    "cache": (lambda v: isinstance(v, dict), "a mapping (the training cache's metadata)"),
    "cache_path": (lambda v: v is None or isinstance(v, str), "a text (the training cache's path) or null"),
    "feature_dim": (lambda v: v is None or _is_count(v), "a positive whole number (the features' dimensions) or null"),
    "threshold": (lambda v: isinstance(v, dict), "a mapping (value, quantile, rule, n_train)"),
    "threshold.value": (lambda v: _is_number(v) and math.isfinite(v),
                        "a finite number (a NaN or infinite threshold flags nothing or everything)"),
    "threshold.quantile": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number between 0 and 1"),
    "threshold.rule": (lambda v: isinstance(v, str), "a text (how the threshold was chosen)"),
    "threshold.n_train": (_is_count, "a positive whole number (how many training scores)"),
    "saved": (lambda v: isinstance(v, dict), "a mapping (when, and with which library versions)"),
}


def _shown(value: Any) -> str:
    """What a value is, in words, for messages."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    try:
        shown = json.dumps(value)[:60]
    except (TypeError, ValueError):
        shown = ""
    names = {dict: "a mapping", list: "a list", str: "a text", int: "the number", float: "the number"}
    return f"{names.get(type(value), 'a ' + type(value).__name__)} {shown}".strip()


def _bad_field(path: Path, field_name: str, problem: str, expected: str) -> PipelineError:
    return PipelineError(f"{path}: {field_name} {problem}; expected {expected}. The head file was edited or written "
                         f"by something other than this project; save the head again (--save-heads of the stage "
                         f"that trained it).")


def _checked_info(path: Path, payload: dict) -> dict:
    """The info JSON, every field of ``INFO_FIELDS`` checked."""
    text = payload.get("info")
    if not isinstance(text, str):
        raise _bad_field(path, "info", "is missing" if text is None else f"is {_shown(text)}",
                         "JSON text (the class name, cache metadata and threshold)")
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _bad_field(path, "info", f"is not valid JSON ({_first_line(error)})", "JSON text") from None
    if not isinstance(info, dict):
        raise _bad_field(path, "info", f"is {_shown(info)}", "a JSON object")
    for name, (valid, expected) in INFO_FIELDS.items():
        parent, _, key = name.rpartition(".")
        holder = info[parent] if parent else info
        if key not in holder:
            raise _bad_field(path, f"info.{name}", "is missing", expected)
        if not valid(holder[key]):
            raise _bad_field(path, f"info.{name}", f"is {_shown(holder[key])}", expected)
    problem = metadata_problem(info["cache"])
    if problem is None and not isinstance(info["cache"].get("features", {}).get("maps", {}), dict):
        problem = f"metadata.features.maps is {_shown(info['cache']['features']['maps'])}, not a mapping"
    if problem:
        raise _bad_field(path, "info.cache", f"(the training cache's metadata): {problem}",
                         "the metadata of the cache the head was trained on")
    return info


def _checked_scores(path: Path, payload: dict, n_train: int) -> np.ndarray:
    """The training scores: a non-empty 1-D tensor of finite numbers, as many as info says."""
    scores = payload.get("train_scores")
    expected = f"a 1-D float tensor of {n_train} finite training scores (info.threshold.n_train)"
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() or scores.ndim != 1:
        raise _bad_field(path, "train_scores", "is missing" if scores is None else f"is {_shown(scores)}", expected)
    values = scores.detach().cpu().double().numpy()
    if len(values) != n_train:
        raise _bad_field(path, "train_scores", f"holds {len(values)} scores", expected)
    if not np.isfinite(values).all():
        raise _bad_field(path, "train_scores", "holds NaN or infinite scores", expected)
    return values


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
    payload = seal({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": head.name, "info": json.dumps(info),
                    "state": _plain(state, f"the {head.name} state"), "train_scores": torch.from_numpy(scores)})
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
    kind, ``Head.load`` for its own): its checksum verified first, then every field checked;
    every problem is a PipelineError naming the file (and the field)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"no saved head at {path}. Save heads with python -m stages.knn (or stages.plume, "
                            f"stages.anomem) --save-heads DIR, which writes DIR/<class>{SUFFIX}.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else would be unpickled
        raise PipelineError(f"{path} is not a readable head file (not a torch.save archive: truncated, damaged or "
                            f"another kind of file); head files are written by --save-heads of python -m stages.knn "
                            f"or stages.plume.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # Also a file holding pickled classes: weights_only refuses to run their code.
        raise PipelineError(f"{path} is not a readable head file ({_first_line(error)}); it is damaged or was not "
                            f"written by --save-heads.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a head saved by this project (no {FORMAT!r} marker); save one with "
                            f"--save-heads of python -m stages.knn or stages.plume.")
    version = payload.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise PipelineError(f"{path} has head format {version!r}; this version reads formats "
                            f"{', '.join(map(str, READABLE_VERSIONS))}. Save the head again with this version.")
    if version >= 2:
        _verify_checksum(path, payload)
    else:
        click.echo(f"warning: {path} is a version-1 head file, saved before head files carried a checksum, so it "
                   f"cannot be verified (damage or an edit would go unnoticed); save the head again with "
                   f"--save-heads to have it checked.", err=True)
    kind = payload.get("kind")
    if not isinstance(kind, str):
        raise _bad_field(path, "kind", "is missing" if kind is None else f"is {_shown(kind)}",
                         "a text (the head's kind: knn, plume, ...)")
    cls = head_class(kind)
    info = _checked_info(path, payload)
    scores = _checked_scores(path, payload, info["threshold"]["n_train"])
    state = payload.get("state")
    if not isinstance(state, dict):
        raise _bad_field(path, "state", "is missing" if state is None else f"is {_shown(state)}",
                         f"a mapping (the {kind} head's parameters)")
    try:
        head = cls._from_state(state, device=device)
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"{path}: its {kind} head cannot be restored ({_first_line(error)}); the file is "
                            f"damaged or was written by an incompatible version.") from None
    threshold = info["threshold"]
    head.threshold_, head.train_scores_ = float(threshold["value"]), scores
    return SavedHead(head=head, kind=kind, class_name=info["class_name"], cache_metadata=info["cache"],
                     threshold=float(threshold["value"]), threshold_quantile=float(threshold["quantile"]),
                     threshold_rule=threshold["rule"], train_scores=scores, feature_dim=info["feature_dim"],
                     cache_path=info["cache_path"], path=path, info=info)


def _verify_checksum(path: Path, payload: dict) -> None:
    """Refuse a file whose contents are not those its recorded SHA-256 was taken of."""
    damaged = f"{path} was changed or damaged after it was saved"
    remedy = ("its threshold and parameters cannot be trusted. Put back the original file if you have it, or save "
              "the head again (--save-heads of the stage that trained it).")
    recorded = payload.get(CHECKSUM)
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise PipelineError(f"{damaged}: its format ({payload['format_version']}) records a SHA-256 of its contents, "
                            f"but {CHECKSUM} is {'missing' if recorded is None else _shown(recorded)}; {remedy}")
    try:
        actual = payload_digest(payload)
    except TypeError as error:
        raise PipelineError(f"{damaged}: {error}, which no head file holds; {remedy}") from None
    except Exception as error:  # a tensor whose bytes cannot be read (a quantized one, say): not ours
        raise PipelineError(f"{damaged}: its contents cannot be read to check them ({_first_line(error)}); "
                            f"{remedy}") from None
    if actual != recorded:
        raise PipelineError(f"{damaged} (checksum mismatch: its contents do not match the SHA-256 recorded when it "
                            f"was written); {remedy}")


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
