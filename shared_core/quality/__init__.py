"""Quality predictors: estimate each model's answer quality in [0, 1] for each prompt."""

from .base import Estimator, ExtensiblePredictor, OnlinePredictor, QualityPredictor
from .cluster import ClusterQuality
from .hybrid import HybridQuality
from .knn import KNNQuality
from .learned_map import LearnedMapQuality
from .parametric import LogisticQuality
from .prior import PriorQuality

__all__ = [
    "QualityPredictor", "ExtensiblePredictor", "OnlinePredictor", "Estimator", "PriorQuality", "KNNQuality",
    "LogisticQuality", "HybridQuality", "ClusterQuality", "LearnedMapQuality", "PREDICTORS",
]

#: Every quality predictor by its one name: `fit_router(dataset, name)`, the commands' --predictor,
#: and its kind in a saved router's manifest.
PREDICTORS: dict[str, type[Estimator]] = {
    "prior": PriorQuality,
    "knn": KNNQuality,
    "parametric": LogisticQuality,
    "hybrid": HybridQuality,
    "cluster": ClusterQuality,
    "learned-map": LearnedMapQuality,
}
