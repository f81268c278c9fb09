"""Anomaly-detection heads: ``fit(train_features)`` then ``score(test_features)``, higher = more anomalous."""

from pipeline.heads.knn import KNNHead

__all__ = ["KNNHead"]
