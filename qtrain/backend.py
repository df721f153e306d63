"""Backend registry: the one dispatch point between the public API and an implementation.

`QTRAIN_BACKEND` = reference | fast | auto (default auto). A config's `backend` field beats the
variable. `auto` takes "fast" when it says it can serve, else "reference", and logs the choice
once. An explicit backend that cannot serve raises a RuntimeError naming the others.
"""
import importlib
import logging
import os

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


def resolve_backend_name(name=None):
    """The concrete backend name for `name` (None -> $QTRAIN_BACKEND -> "auto")."""
    requested = name if name is not None else os.environ.get(ENV_VAR, "auto")
    requested = requested.strip().lower()
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
    chosen = "fast" if ok else "reference"
    if chosen not in _AUTO_LOGGED:
        _AUTO_LOGGED.add(chosen)
        if ok:
            log.info("qtrain: %s=auto -> 'fast' backend", ENV_VAR)
        else:
            log.warning("qtrain: %s=auto -> 'reference' backend (fast unavailable: %s)",
                        ENV_VAR, reason)
    return chosen


def get_backend(name=None):
    """The backend object for `name` (None -> $QTRAIN_BACKEND, default auto)."""
    return _instance(resolve_backend_name(name))


def list_backends():
    """{name: (available, reason)} for every known backend."""
    return {n: _status(n) for n in sorted(set(_LAZY_MODULES) | set(_FACTORIES))}
