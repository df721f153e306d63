"""Backend names the harness answers: the qtrain registry, its own extra entries, and import paths.

Extra registry entries (registered once, on first use):
  fast-interpret  the fast backend's Triton kernels under the CPU interpreter (TRITON_INTERPRET=1)
  torch-cpu       an independent torch re-statement of the quantize ops (conformance/independent.py)
A name "pkg.module:factory" imports the module and calls factory() (no registration needed).
"""
import importlib
import inspect
import os

_REGISTERED = False


class _Interpreted:
    """The fast backend judged on CPU tensors: available() asks whether its kernels can run
    under the interpreter (FastBackend.available() speaks for CUDA only); every op delegates."""

    name = "fast-interpret"

    def __init__(self, inner):
        self._inner = inner

    def available(self):
        return self._inner.runnable_on("cpu")

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def _fast_interpret():
    # Triton picks the interpreter when a kernel is decorated, so the variable must be set before
    # qtrain.fast's kernel modules import; a process that already imported them keeps their mode.
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from qtrain.fast import FastBackend
    except ImportError:   # the package may not re-export it (yet)
        from qtrain.fast.backend import FastBackend
    return _Interpreted(FastBackend(allow_interpreter=True))


def _torch_cpu():
    from .independent import TorchCpuBackend
    return TorchCpuBackend()


HARNESS_BACKENDS = {"fast-interpret": _fast_interpret, "torch-cpu": _torch_cpu}


def register_harness_backends():
    global _REGISTERED
    if not _REGISTERED:
        from qtrain.backend import register_backend
        for name, factory in HARNESS_BACKENDS.items():
            register_backend(name, factory)
        _REGISTERED = True


class BackendUnavailable(RuntimeError):
    """The named backend cannot serve here; the message says why and what else exists."""


def resolve(name: str):
    """The backend object for a registry name or a "module:factory" import path."""
    if ":" in name:
        module, attr = name.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        # A class or a factory function is called; a ready backend object is used as is.
        backend = obj() if inspect.isclass(obj) or not hasattr(obj, "quantize_float8") else obj
    else:
        register_harness_backends()
        from qtrain.backend import get_backend
        try:
            backend = get_backend(name)
        except RuntimeError as e:
            raise BackendUnavailable(str(e)) from None
    ok, reason = backend.available() if hasattr(backend, "available") else (True, "no available()")
    if not ok:
        raise BackendUnavailable(f"backend {name!r} cannot serve: {reason}")
    return backend


def known_names():
    register_harness_backends()
    from qtrain.backend import list_backends
    return list_backends()
