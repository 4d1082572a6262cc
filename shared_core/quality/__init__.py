"""Quality predictors: estimate each model's answer quality in [0, 1] for each prompt.

Each predictor's module is imported when its class is first asked for (`PREDICTORS[name]`, or the
class by name from this package): loading a saved router imports the one predictor it holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import Estimator, ExtensiblePredictor, OnlinePredictor, QualityPredictor

if TYPE_CHECKING:
    from .cluster import ClusterQuality
    from .hybrid import HybridQuality
    from .knn import KNNQuality
    from .learned_map import LearnedMapQuality
    from .parametric import LogisticQuality
    from .prior import PriorQuality

__all__ = [
    "QualityPredictor", "ExtensiblePredictor", "OnlinePredictor", "Estimator", "PriorQuality", "KNNQuality",
    "LogisticQuality", "HybridQuality", "ClusterQuality", "LearnedMapQuality", "PREDICTORS", "Registry",
]


class Registry(Mapping[str, "type[Estimator]"]):
    """Estimator classes by name, each given as "package.module:Class" and imported on first lookup.

    Iterating, `len` and `in` import nothing; `registry[name]` imports that class's module (KeyError
    for an unknown name).
    """

    def __init__(self, locations: Mapping[str, str]) -> None:
        for name, where in locations.items():
            module, _, attr = where.partition(":")
            if not module or not attr:
                raise ValueError(f"{name!r}: location {where!r} is not 'package.module:Class'")
        self.locations: dict[str, str] = dict(locations)

    def __getitem__(self, name: str) -> type[Estimator]:
        module, _, attr = self.locations[name].partition(":")
        cls: type[Estimator] = getattr(import_module(module), attr)
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self.locations)

    def __len__(self) -> int:
        return len(self.locations)

    def kind_of(self, cls: type) -> str | None:
        """The name `cls` is registered under, or None; imports only modules `cls` itself comes from."""
        where = f"{cls.__module__}:{cls.__qualname__}"
        # Same location is not enough: a class redefined (reloaded module) under that name is another class.
        return next((name for name, at in self.locations.items() if at == where and self[name] is cls), None)

    def __repr__(self) -> str:
        return f"Registry({self.locations!r})"


#: Every quality predictor by its one name: `fit_router(dataset, name)`, the commands' --predictor,
#: and its kind in a saved router's manifest.
PREDICTORS = Registry({
    "prior": f"{__name__}.prior:PriorQuality",
    "knn": f"{__name__}.knn:KNNQuality",
    "parametric": f"{__name__}.parametric:LogisticQuality",
    "hybrid": f"{__name__}.hybrid:HybridQuality",
    "cluster": f"{__name__}.cluster:ClusterQuality",
    "learned-map": f"{__name__}.learned_map:LearnedMapQuality",
})
_CLASSES = {where.partition(":")[2]: name for name, where in PREDICTORS.locations.items()}


def __getattr__(name: str) -> Any:
    """A predictor class by its class name, imported on first use (AttributeError for any other name)."""
    kind = _CLASSES.get(name)
    if kind is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = PREDICTORS[kind]
    globals()[name] = cls
    return cls


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
