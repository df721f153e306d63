"""Backend registry: the one dispatch point between the public API and an implementation.

`QTRAIN_BACKEND` = reference | fast | auto (default auto). A config's `backend` field beats the
variable. `auto` takes "fast" when it says it can serve, else "reference", and logs the choice
once. Given the device of the tensors, `auto` takes "fast" only where fast can run tensors of
that device (a CPU model on a GPU machine runs on "reference"), and logs that choice once per
device type. An explicit backend that cannot serve raises a RuntimeError naming the others.

Layers hold their resolution through the `BackendBound` mixin: an `auto` layer answers again
when it is moved and when an input arrives on another device type (a model converted on the
CPU and then moved to the GPU, or the reverse).
"""
import importlib
import logging
import os

import torch

log = logging.getLogger("qtrain")

ENV_VAR = "QTRAIN_BACKEND"
CHOICES = ("reference", "fast", "auto")

_FACTORIES = {}          # name -> zero-argument callable returning a backend object
_INSTANCES = {}          # name -> backend object, built once
_LAZY_MODULES = {"reference": "qtrain.reference_backend", "fast": "qtrain.fast"}
_AUTO_LOGGED = set()


class _Unavailable:
    """Stands in for a backend whose module failed to import; says why."""

    def __init__(self, name, reason):
        self.name = name
        self._reason = reason

    def available(self):
        return False, self._reason


def register_backend(name, factory):
    """Register `factory() -> backend` under `name` (replaces an earlier registration)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def _instance(name):
    if name in _INSTANCES:
        return _INSTANCES[name]
    if name not in _FACTORIES and name in _LAZY_MODULES:
        # Importing the module registers it; a failed import leaves a reason, not a crash.
        try:
            importlib.import_module(_LAZY_MODULES[name])
        except ImportError as e:
            _INSTANCES[name] = _Unavailable(name, f"import {_LAZY_MODULES[name]} failed: {e}")
            return _INSTANCES[name]
        if name not in _FACTORIES:
            _INSTANCES[name] = _Unavailable(
                name, f"{_LAZY_MODULES[name]} imported but registered no {name!r} backend")
            return _INSTANCES[name]
    if name not in _FACTORIES:
        raise RuntimeError(
            f"unknown qtrain backend {name!r}; expected one of {list(CHOICES)}"
            f" (registered: {sorted(_FACTORIES)})")
    _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def _status(name):
    try:
        return _instance(name).available()
    except Exception as e:  # a broken factory is "cannot serve", with its reason
        return False, f"{type(e).__name__}: {e}"


def _others(name):
    rows = []
    for other in sorted(set(_LAZY_MODULES) | set(_FACTORIES)):
        if other != name:
            ok, reason = _status(other)
            rows.append(f"{other} ({'available' if ok else 'unavailable: ' + reason})")
    return ", ".join(rows)


def _requested(name):
    return (name if name is not None else os.environ.get(ENV_VAR, "auto")).strip().lower()


def _known_device(device):
    """torch.device of `device`, or None where it tells nothing about where kernels run."""
    if device is None:
        return None
    device = torch.device(device)
    return None if device.type == "meta" else device


def _fast_runs_on(device):
    """(ok, reason) of the fast backend for tensors of `device`."""
    runnable_on = getattr(_instance("fast"), "runnable_on", None)
    if runnable_on is None:          # a registered stand-in that does not say: trust available()
        return True, ""
    try:
        return runnable_on(device)
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


def resolve_backend_name(name=None, device=None):
    """The concrete backend name for `name` (None -> $QTRAIN_BACKEND -> "auto"); `device`: where
    the tensors are, when known (`auto` then answers for that device)."""
    requested = _requested(name)
    if requested != "auto":
        if requested not in _FACTORIES and requested not in _LAZY_MODULES:
            source = "config" if name is not None else ENV_VAR
            raise RuntimeError(f"unknown qtrain backend {requested!r} (from {source});"
                               f" expected one of {list(CHOICES)}")
        ok, reason = _status(requested)
        if not ok:
            raise RuntimeError(
                f"qtrain backend {requested!r} cannot serve: {reason}. Other backends: "
                f"{_others(requested)}. Set {ENV_VAR}=auto to pick one automatically.")
        return requested
    ok, reason = _status("fast")
    device = _known_device(device)
    if ok and device is not None:
        ok, reason = _fast_runs_on(device)
        if not ok:
            key = ("reference", device.type)
            if key not in _AUTO_LOGGED:
                _AUTO_LOGGED.add(key)
                log.warning("qtrain: %s=auto -> 'reference' backend for %s tensors (fast "
                            "cannot run them: %s)", ENV_VAR, device.type, reason)
            return "reference"
    chosen = "fast" if ok else "reference"
    if chosen not in _AUTO_LOGGED:
        _AUTO_LOGGED.add(chosen)
        if ok:
            log.info("qtrain: %s=auto -> 'fast' backend", ENV_VAR)
        else:
            log.warning("qtrain: %s=auto -> 'reference' backend (fast unavailable: %s)",
                        ENV_VAR, reason)
    return chosen


@torch.compiler.assume_constant_result
def _resolve_constant(name, device):
    return resolve_backend_name(name, device)


def resolve_backend_for_call(name=None, device=None):
    """resolve_backend_name(name, device) for a function that torch.compile may trace
    (qtrain.grouped_mm, qtrain.linear): torch.compile runs the resolution once, while tracing,
    and keeps its answer as a constant of the graph, so the backend's checks (CUDA queries,
    Triton's version) never break the graph. On the H200 they broke it once per
    qtrain.grouped_mm call. Like a QuantizedLinear's backend, which is resolved at
    construction, a compiled graph keeps the answer it was traced with (a later change of
    QTRAIN_BACKEND applies to the next compilation)."""
    if torch.compiler.is_compiling():
        return _resolve_constant(name, device)
    return resolve_backend_name(name, device)


class BackendBound:
    """Mixin for the nn.Module layers that run on a qtrain backend: `self.backend` is the
    resolution of the config's backend name for the device of the layer's tensors (the
    attribute named by BACKEND_TENSOR). An explicit backend is resolved once (and raises then
    if it cannot serve) and never again. `auto` is answered again when the layer is moved
    (nn.Module._apply: to, cuda, cpu, to_empty; eager code, so a model moved and then
    compiled does not resolve inside the traced forward) and when an input arrives on another
    device type; on an unknown device (meta) it stays "auto" until one of those says where the
    tensors are."""
    BACKEND_TENSOR = "weight"

    def bind_backend(self, name, device=None):
        """Resolve `name` for tensors on `device` and keep the answer."""
        device = _known_device(device)
        self._backend_requested = name
        self._backend_auto = _requested(name) == "auto"
        self._backend_device = None if device is None else device.type
        if self._backend_auto and device is None:
            self.backend = "auto"
        else:
            self.backend = resolve_backend_name(name, device)

    def follow_device(self, device):
        """An `auto` layer answers again for tensors on `device` when its type is not the one
        answered for (meta tells nothing and changes nothing)."""
        if self._backend_auto:
            device = _known_device(device)
            if device is not None and device.type != self._backend_device:
                self.bind_backend(self._backend_requested, device)

    def backend_for_input(self, device):
        """self.backend for an input on `device` (an explicit backend refuses tensors it
        cannot run with its own clear error)."""
        self.follow_device(device)
        return self.backend

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.follow_device(getattr(self, self.BACKEND_TENSOR).device)
        return out


def get_backend(name=None):
    """The backend object for `name` (None -> $QTRAIN_BACKEND, default auto)."""
    return _instance(resolve_backend_name(name))


def list_backends():
    """{name: (available, reason)} for every known backend."""
    return {n: _status(n) for n in sorted(set(_LAZY_MODULES) | set(_FACTORIES))}
