"""Quality predictors: estimate each model's answer quality in [0, 1] for each prompt."""

from .base import QualityPredictor
from .prior import PriorQuality

__all__ = ["QualityPredictor", "PriorQuality"]
