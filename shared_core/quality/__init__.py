"""Quality predictors: estimate each model's answer quality in [0, 1] for each prompt."""

from .base import ExtensiblePredictor, OnlinePredictor, QualityPredictor
from .cluster import ClusterQuality
from .hybrid import HybridQuality
from .knn import KNNQuality
from .learned_map import LearnedMapQuality
from .parametric import LogisticQuality
from .prior import PriorQuality

__all__ = [
    "QualityPredictor", "ExtensiblePredictor", "OnlinePredictor", "PriorQuality", "KNNQuality",
    "LogisticQuality", "HybridQuality", "ClusterQuality", "LearnedMapQuality",
]
