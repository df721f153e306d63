"""qtrain.fast: Triton kernels and torch scaled products for GPUs (spec/ is the contract)."""
# Importing this package registers the "fast" backend with the one registry (qtrain/backend.py).
from qtrain.backend import register_backend as _register_backend

from .backend import FastBackend

_register_backend("fast", FastBackend)
