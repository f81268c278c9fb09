"""The feature store: Zarr caches of features, HDF5 import and export, and their command
(``python -m pipeline.cache``). It knows no backbone and no head.

- ``cache``: the store itself (``FeatureCache``: format, chunks and their checksums, reading,
  derived splits), ``ArraySpec``, ``open_or_create`` and the format constants.
- ``metadata``: the metadata checks (split names, class lists, metadata and attributes, their
  digests, the library versions recorded, how to make a cache again).
- ``locks``: the writer lock of an extraction (or of each shard) and the attributes lock.
- ``guards``: the overwrite guards (only a store of ours is replaced or removed, never the
  working or data directory).
- ``hdf5``: HDF5 import and export; ``views``: the augmented-views store beside a cache;
  ``command``: ``python -m pipeline.cache``.
"""

from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, FORMAT_VERSION, ArraySpec, FeatureCache, once_per_process,
                                  open_or_create)
from pipeline.store.guards import STORE_FORMAT, check_replaceable, remove_store
from pipeline.store.locks import attrs_lock, writer_lock
from pipeline.store.metadata import SPLITS, differences, library_versions

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMAT_VERSION", "SPLITS", "STORE_FORMAT", "ArraySpec", "FeatureCache", "attrs_lock",
           "check_replaceable", "differences", "library_versions", "once_per_process", "open_or_create", "remove_store",
           "writer_lock"]
