"""The feature store: Zarr caches of features (format, chunks, checksums, locks), HDF5 import
and export, and their command (``python -m pipeline.cache``). It knows no backbone and no head."""

from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, FORMAT_VERSION, SPLITS, STORE_FORMAT, ArraySpec, FeatureCache,
                                  attrs_lock, check_replaceable, differences, library_versions, once_per_process,
                                  open_or_create, remove_store, writer_lock)

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMAT_VERSION", "SPLITS", "STORE_FORMAT", "ArraySpec", "FeatureCache", "attrs_lock",
           "check_replaceable", "differences", "library_versions", "once_per_process", "open_or_create", "remove_store",
           "writer_lock"]
