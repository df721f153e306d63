"""The qtrain custom ops, called directly in eager mode.

Every quantize / product op is a torch.library op (DefinedOp) so that torch.compile sees one
opaque call with an exact fake kernel. In eager mode the dispatcher round trip buys nothing and
costs host time on every call, which small and launch-bound layers (MoE experts) feel: measured
on the H200 host, see benchmarks/NOTES.md. So `custom_op` below defines the op and returns a
callable that runs the Python implementation directly when the call is eager (not under
torch.compile / export tracing) and every tensor argument is a plain torch.Tensor (or
nn.Parameter).
Anything else (FakeTensor, FunctionalTensor, a tensor subclass that intercepts the op such as
qtrain.fsdp's gathered float8 weight) goes through the registered op. Same code, same bits.

QTRAIN_EAGER_DISPATCH=op sends every call through the registered op (for debugging).
"""
import functools
import os

import torch

DIRECT = os.environ.get("QTRAIN_EAGER_DISPATCH", "direct") != "op"


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain(values):
    for v in values:
        if isinstance(v, torch.Tensor) and type(v) not in _PLAIN:
            return False
    return True


def plain_eager(values):
    """An eager call (not under torch.compile / export tracing) whose tensors are all plain."""
    return DIRECT and not torch.compiler.is_compiling() and _plain(values)


class EagerDirectOp:
    """A registered custom op (attribute access goes to it: register_fake, ...) whose eager
    calls on plain tensors run its Python implementation without the dispatcher."""

    def __init__(self, op, fn):
        self._op, self._fn = op, fn
        functools.update_wrapper(self, fn)

    def __getattr__(self, name):
        return getattr(self._op, name)

    def __call__(self, *args, **kwargs):
        fn = self._fn if plain_eager(args) and _plain(kwargs.values()) else self._op
        if torch.is_grad_enabled():      # the ops have no autograd kernel: their outputs never
            with torch.no_grad():        # carry autograd, whichever way the call goes
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)


_LIBRARIES = {}


def _library(namespace):
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")
    return _LIBRARIES[namespace]


class DefinedOp:
    """An op defined from fn's annotated signature (torch.library.infer_schema, no mutated
    arguments) with fn as its one kernel for every device (CompositeExplicitAutograd) and no
    autograd kernel: the qtrain ops run inside autograd.Functions and compiled graphs, never
    differentiated themselves. Calls go through the dispatcher to fn. Against
    torch.library.custom_op this skips its Python autograd and backend wrappers and their
    dynamo-disable frames: a two-tensor op took 40-55 us a call through custom_op and 10-18
    through define / impl against 6-11 direct (dev CPU, torch 2.13, 2026-12-02,
    benchmarks/op_call_cost.py; the H200's compiled tensorwise block spent 14.4 ms of host per
    step against 2.7 for bf16, benchmarks/NOTES.md fourteenth session)."""

    def __init__(self, qualname, fn):
        namespace, name = qualname.split("::")
        self._lib = _library(namespace)
        self._qualname = qualname
        self._lib.define(name + torch.library.infer_schema(fn, mutates_args=()))
        self._lib.impl(name, fn, "CompositeExplicitAutograd")
        self._overload = getattr(getattr(torch.ops, namespace), name).default

    def register_fake(self, fake):
        """Decorator: the op's fake (meta) kernel, as torch.library.register_fake."""
        torch.library.register_fake(self._qualname, fake, lib=self._lib)
        return fake

    def __call__(self, *args, **kwargs):
        return self._overload(*args, **kwargs)


def custom_op(name):
    """Decorator: the op `name` ("namespace::op") defined from fn (DefinedOp) plus the eager
    direct call (EagerDirectOp)."""
    def wrap(fn):
        return EagerDirectOp(DefinedOp(name, fn), fn)
    return wrap
