"""Loading a saved head of any registered kind (``python -m stages.score``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.heads.registry import HEADS, head_class
from pipeline.heads.saving import SavedHead, read_head_file


def load_head(path: str | Path, device: str = "cpu") -> SavedHead:
    """A head file of any registered kind, with what it was trained on and its threshold."""
    def known(kind: object) -> type:
        if kind not in HEADS:
            raise PipelineError(f"{path}: unknown head kind {kind!r}; this version knows: {', '.join(HEADS)}.")
        return head_class(str(kind))

    return read_head_file(path, known, device)
