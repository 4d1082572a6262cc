"""The optional compiled kernels: C versions of a decision's per-prompt hot loops, built at install.

`pip install` compiles them when a C compiler is there (pyproject.toml declares them as optional
setuptools extensions: a failed build leaves the NumPy code in charge, with the same results).
`kernel(name)` imports one, or returns None when it was not built or the environment variable
OMNIROUTE_KERNELS=0 (read at import) switches them off; where a missing one's work is done,
`fallback(name)` logs once per process, as a warning.

- `shared_core._tfidf`: one prompt's projected TF-IDF row (embed.TfidfSvdEmbedder), the same bits.
- `shared_core._knn`: a query's k nearest labelled rows per group of models and their label sums
  (quality.memory.LabelMemory): the same rows, their labels added row after row as the NumPy
  code adds them, so the same bits.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

__all__ = ["ABI", "ENABLED", "KERNELS", "fallback", "kernel"]

logger = logging.getLogger("omniroute")

#: False when OMNIROUTE_KERNELS=0: every caller runs its NumPy code.
ENABLED = os.environ.get("OMNIROUTE_KERNELS", "1") != "0"

#: Every compiled kernel, by module name under shared_core.
KERNELS = ("_tfidf", "_knn")
#: The kernels' ABI (OMNIROUTE_KERNEL_ABI in shared_core/_kernel.h): a module of another is not used.
ABI = 1

# Why each kernel asked for is not used (it was not built, or built from other sources).
_missing: dict[str, str] = {}
_warned = False


def kernel(name: str) -> ModuleType | None:
    """The compiled module `shared_core.<name>`, or None when it was not built (or built from other
    sources: a stale build of an older checkout) or kernels are off."""
    if not ENABLED:
        return None
    try:
        module = importlib.import_module(f"shared_core.{name}")
    except ImportError as error:
        _missing[name] = str(error)
        return None
    if getattr(module, "ABI", None) != ABI:
        _missing[name] = f"built from other sources (ABI {getattr(module, 'ABI', None)}, this code needs {ABI})"
        return None
    return module


def fallback(name: str) -> None:
    """Say (once per process, as a warning) that the NumPy code runs where the kernel `name` would.

    Called where the work is done, not at import: a router that never embeds nor searches (priors
    alone) never warns, and an application has set up its logging by then."""
    global _warned
    if _warned or name not in _missing:
        return
    _warned = True
    logger.warning("the compiled kernels %s are not available (%s): routing uses the NumPy code, with the same "
                   "decisions, about 1.3x slower per decision; reinstall (pip install -e . or pip install omniroute) "
                   "where a C compiler (gcc or clang) is found to build them, or set OMNIROUTE_KERNELS=0 to say "
                   "this is intended",
                   ", ".join(f"shared_core.{k}" for k in KERNELS if k in _missing), "; ".join(
                       f"{k}: {why}" for k, why in _missing.items()))
