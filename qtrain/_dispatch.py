"""The qtrain custom ops, called directly in eager mode.

Every quantize / product op is a torch.library custom op so that torch.compile sees one opaque
call with an exact fake kernel. In eager mode the dispatcher round trip buys nothing and costs
host time on every call, which small and launch-bound layers (MoE experts) feel: measured on
the H200 host, see benchmarks/NOTES.md. So `custom_op` below registers the op as usual and
returns a callable that runs the Python implementation directly when the call is eager
(not under torch.compile / export tracing) and every tensor argument is a plain torch.Tensor
(or nn.Parameter).
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
        if plain_eager(args) and _plain(kwargs.values()):
            if torch.is_grad_enabled():          # a custom op's outputs never carry autograd
                with torch.no_grad():
                    return self._fn(*args, **kwargs)
            return self._fn(*args, **kwargs)
        return self._op(*args, **kwargs)


def custom_op(name):
    """Decorator: torch.library.custom_op(name, mutates_args=()) plus the eager direct call."""
    def wrap(fn):
        return EagerDirectOp(torch.library.custom_op(name, mutates_args=())(fn), fn)
    return wrap
