"""Frozen-feature one-class anomaly detection: datasets, backbones, feature cache, heads, metrics."""

__version__ = "0.1.0"
