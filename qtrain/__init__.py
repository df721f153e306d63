"""qtrain: low-precision training for PyTorch (public API; see spec/ for the rules)."""
# Attributes load lazily (PEP 562) so `import qtrain.reference` pulls in NumPy and ml_dtypes only.
import importlib

__version__ = "0.1.0"

_LAZY = {}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qtrain' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
