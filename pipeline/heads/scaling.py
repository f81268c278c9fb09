"""Feature scaling before a detector, fitted on the normal training rows only.

    none         the features as the backbone gave them
    standardise  each dimension minus its training mean, over its training standard deviation
                 (a dimension constant over the training rows is only centred)
    l2           each row divided by its L2 norm (nothing learnt; a zero row stays zero)
    sqrt         each value's signed square root, sign(x) * sqrt(|x|) (power normalisation, Perronnin
                 et al. 2010; nothing learnt): pooled post-ReLU features are skewed, heavy-tailed
                 and non-negative, and the root brings them nearer a Gaussian

Distance- and kernel-based detectors (OC-SVM, LOF, kNN) see every dimension in its own units
unless standardised; the shrinkage target of Ledoit-Wolf is a multiple of the identity, so it
too depends on the dimensions' scales. Isolation Forest, ECOD, COPOD and HBOS work dimension by
dimension and are unchanged by standardising (up to rounding). The scaler's arrays are part of
a saved head. NumPy only, so that ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.heads.settings import SCALINGS


@dataclass(frozen=True)
class Scaler:
    """A fitted scaling: ``scaler(rows)`` gives the rows as float64, scaled."""

    kind: str
    shift: np.ndarray | None = None  # standardise: the training mean
    scale: np.ndarray | None = None  # standardise: the training standard deviation (1 where it is 0)

    @classmethod
    def fit(cls, kind: str, rows: np.ndarray) -> "Scaler":
        check_scaling(kind)
        if kind != "standardise":
            return cls(kind)
        rows = np.asarray(rows, dtype=np.float64)
        std = rows.std(axis=0)
        return cls(kind, rows.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if self.kind == "standardise":
            if rows.shape[1:] != self.shift.shape:
                raise PipelineError(f"the scaler was fitted on {self.shift.shape[0]}-d features, got shape "
                                    f"{rows.shape}.")
            return (rows - self.shift) / self.scale
        if self.kind == "l2":
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            return rows / np.where(norms > 0, norms, 1.0)
        if self.kind == "sqrt":
            return np.sign(rows) * np.sqrt(np.abs(rows))
        return rows

    def state(self) -> dict[str, Any]:
        """What a head file keeps of it (arrays become tensors there)."""
        if self.kind != "standardise":
            return {"kind": self.kind}
        return {"kind": self.kind, "shift": self.shift, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> "Scaler":
        kind = check_scaling(str(state["kind"]))
        if kind != "standardise":
            return cls(kind)
        return cls(kind, np.asarray(state["shift"], dtype=np.float64), np.asarray(state["scale"], dtype=np.float64))


def check_scaling(kind: str) -> str:
    if kind not in SCALINGS:
        raise PipelineError(f"scaling must be one of {', '.join(SCALINGS)}, got {kind!r}.")
    return kind
