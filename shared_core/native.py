"""The optional compiled kernels: C versions of a decision's per-prompt hot loops, built at install.

`pip install` compiles them when a C compiler is there (pyproject.toml declares them as optional
setuptools extensions: a failed build leaves the NumPy code in charge, with the same results).
`kernel(name)` imports one, or returns None when it was not built or the environment variable
OMNIROUTE_KERNELS=0 (read at import) switches them off; a missing one is logged once, as a warning.

- `shared_core._tfidf`: one prompt's projected TF-IDF row (embed.TfidfSvdEmbedder), the same bits.
- `shared_core._knn`: a query's k nearest labelled rows per group of models and their label sums
  (quality.memory.LabelMemory): the same rows, their labels added row after row as the NumPy
  code adds them, so the same bits.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType

__all__ = ["ENABLED", "KERNELS", "kernel"]

logger = logging.getLogger("omniroute")

#: False when OMNIROUTE_KERNELS=0: every caller runs its NumPy code.
ENABLED = os.environ.get("OMNIROUTE_KERNELS", "1") != "0"

#: Every compiled kernel, by module name under shared_core.
KERNELS = ("_tfidf", "_knn")

_warned = False


def kernel(name: str) -> ModuleType | None:
    """The compiled module `shared_core.<name>`, or None when it was not built or kernels are off."""
    global _warned
    if not ENABLED:
        return None
    try:
        return importlib.import_module(f"shared_core.{name}")
    except ImportError as error:
        if not _warned:
            _warned = True
            missing = [k for k in KERNELS if importlib.util.find_spec(f"shared_core.{k}") is None] or [name]
            logger.warning("the compiled kernels %s are not available (%s): routing uses the NumPy code, with the "
                           "same decisions, about 1.3x slower per decision; reinstall with a C compiler (gcc or "
                           "clang) to build them, or set OMNIROUTE_KERNELS=0 to say this is intended",
                           ", ".join(f"shared_core.{k}" for k in missing), error)
        return None
