"""The augmented-views store beside a feature cache (``cache/<name>.views.zarr``): where it is,
opening it (refused if made from another cache) and reading the views of given rows. Written
by pipeline.extract.views; read by the heads that train on views (AnoMem)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.store.cache import FeatureCache
from pipeline.store.metadata import differences


def views_path(cache_path: str | Path) -> Path:
    """cache/x.zarr -> cache/x.views.zarr"""
    cache_path = Path(cache_path)
    if cache_path.name in ("", ".", ".."):  # "." has no name to put ".views" beside
        cache_path = cache_path.resolve()
    stem = cache_path.name[:-len(".zarr")] if cache_path.name.endswith(".zarr") else cache_path.name
    return cache_path.with_name(stem + ".views.zarr")


def open_views(cache: FeatureCache) -> FeatureCache:
    """The views store of ``cache``, refused if it was made from a different cache."""
    path = views_path(cache.path)
    if not path.exists():
        raise PipelineError(f"{cache.path} has no augmented views beside it ({path}). Make them with "
                            f"python -m pipeline.extract ... --views 2 (the same options as the cache), "
                            f"or dvc repro.")
    views = FeatureCache.open(path)
    found = differences(cache.metadata, views.metadata.get("views_of", {}))
    if found:
        raise PipelineError(f"the views in {path} were made from a different cache than {cache.path}: "
                            f"{'; '.join(found)}. Re-run the extraction with --views.")
    return views


def load_views(cache: FeatureCache, rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The views of the given training rows of ``cache`` (each must have views): name -> (n, V, ...)."""
    store = open_views(cache)
    view_rows = store.read("train", "rows")
    position = {int(r): i for i, r in enumerate(view_rows)}
    missing = [int(r) for r in rows if int(r) not in position]
    if missing:
        raise PipelineError(f"{len(missing)} of the requested training rows have no cached views "
                            f"(the views were made with --views-per-class); use the rows that do.")
    index = np.array([position[int(r)] for r in rows], dtype=np.int64)
    return {name: store.read("train", name, index) for name in names}
