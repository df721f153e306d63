"""Quantized linear driven by the recipe table (spec/07-recipes.md): one autograd.Function,
the F.linear-style entry point `linear`, and the `QuantizedLinear` module. (The file is named
qlinear so that it does not shadow the public function `qtrain.linear`.)

What autograd keeps for backward (RC-*), derived from the plan, not special-cased per recipe:
- x: the high-precision x when grad_weight runs in high precision; the forward's quantized x,
  reused transposed, when its quantization is axis free (tensorwise); otherwise x quantized
  along M for grad_weight, computed in the forward (1 byte/elem instead of 2 or 4).
- w: the weight itself (no extra memory: it is a Parameter, and under FSDP2 the unsharded
  weight that the backward all-gathers again), re-quantized along N in the backward (RC-14).
  With `keep_quantized_weight` (tensorwise, square blocks) the forward's quantized w instead,
  reused transposed: one cast less per step for 1 byte per weight element kept. Without it,
  a tensorwise w's amax (4 bytes) is kept, computed once in the forward for both of w's casts:
  the backward's cast of w.T runs its cast pass alone.
"""
import functools
import os
import weakref

import torch
from torch import nn

from . import ops
from .backend import BackendBound, _instance as _backend_impl, resolve_backend_for_call
from .recipes import (CounterNoise, QOperand, QValues, mx_values_route, quantize_operand,
                      quantize_operand_both_axes, quantize_operand_tensorwise_both,
                      quantize_values)

CHECK_FINITE_ENV = "QTRAIN_CHECK_FINITE"


def _check_finite(t, fqn, what):
    # amax over any group is non-finite exactly when some element is (F8-1: NaN propagates).
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise FloatingPointError(
            f"{CHECK_FINITE_ENV}=1: non-finite amax in layer {fqn or '<root>'!r}, tensor "
            f"{what} (shape {tuple(t.shape)}, dtype {t.dtype}, {bad} non-finite elements)")


def _mm_dtype(dtype):
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32   # MM-2 out dtypes


def _scaled_mm(qa, qb, out_dtype, backend, use_fast_accum=False):
    if isinstance(qa, QValues) or isinstance(qb, QValues):
        return _values_mm(qa, qb, out_dtype, backend)
    # NT form wants both payloads row-major. Only operands reused transposed (tensorwise x and
    # g, a kept 128x128-block w) arrive as views; their 1-byte transpose is the one copy made
    # here (fp8 tensor-core products are TN-only, so some transpose of them is unavoidable).
    out = ops.scaled_mm_nt(_row_major(qa.payload, backend), qa.dequant_fp32(),
                           _row_major(qb.payload, backend), qb.dequant_fp32(),
                           _mm_dtype(out_dtype), backend, use_fast_accum, qa.pow2 and qb.pow2)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _values_mm(qa, qb, out_dtype, backend):
    """RC-7's emulated MX product of operands given as MX-10 values (QValues) or as payload and
    factors (x along M, kept for backward): ops.mm_mx_values, bf16 out with fp32 sums."""
    def side(q):
        if isinstance(q, QValues):
            return q.values, None
        return _row_major(q.payload, backend), q.dequant_fp32()
    (a, da), (b, db) = side(qa), side(qb)
    out = ops.mm_mx_values(a, da, b, db, backend)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _row_major(payload, backend):
    """The payload row-major. A transposed view of a row-major 1-byte payload goes, in eager
    mode, through the backend's own transpose where it has one (fast may tile it: torch's copy
    of a transposed view strides through memory); a compiled graph keeps torch's copy, which
    inductor tiles."""
    if payload.is_contiguous():
        return payload
    if (payload.dim() == 2 and payload.element_size() == 1 and payload.t().is_contiguous()
            and type(payload) is torch.Tensor and not torch.compiler.is_compiling()):
        impl = _backend_impl(backend)
        if hasattr(impl, "transpose_payload"):
            return impl.transpose_payload(payload.t())
    return payload.contiguous()


# How a tensorwise x or g reaches the product that reads it along its other axis: "copy" (the
# payload quantized once, transposed by a copy when that product runs) or "cast" (the cast pass
# writes both layouts, no copy). H200 (2026-12-01, seventh session): the cast 128 us against
# cast + tiled transpose 129-132 us at 8192^2; Llama3-8B block, two processes, compiled 15.01
# against 15.09 ms, eager 19.44 against 19.60 ms (benchmarks/results, layoutab).
TENSORWISE_TRANSPOSE_ENV = "QTRAIN_TENSORWISE_TRANSPOSE"
TENSORWISE_TRANSPOSE = os.environ.get(TENSORWISE_TRANSPOSE_ENV, "cast")
if TENSORWISE_TRANSPOSE not in ("copy", "cast"):
    raise ValueError(f"{TENSORWISE_TRANSPOSE_ENV}={TENSORWISE_TRANSPOSE!r}: expected 'copy' or "
                     f"'cast'")

SHARE_INPUT_ENV = "QTRAIN_SHARE_INPUT_QUANT"
SHARE_INPUT = os.environ.get(SHARE_INPUT_ENV, "1") != "0"


class _SharedInput:
    """The quantizations of one input tensor, made once for every quantized linear that reads
    it in eager mode (q, k and v of one normed x; gate and up of another): the same bits as
    quantizing it per linear, one cast instead of three, and one saved copy for backward
    instead of three (a compiled graph merges those identical casts itself). An entry is
    dropped when its input is freed or changed in place (its version counter), so what it holds
    is never older than the input it was made from. One entry lives at a time: the linears
    that share an input run one after another, and an entry for a new input drops the old
    one; a backward drops it too. Otherwise an entry would live as long as its input, and an
    input alive until the backward (rowwise_with_gw_hp keeps x itself; the model's own ops
    keep others) would keep its quantized copies alive on top of what the linears saved."""
    _live = {}                                   # id(input) -> _SharedInput

    def __init__(self, input):
        key = id(input)
        self.version = input._version
        self.items = {}

        def drop(ref, key=key):                  # no reference to self: freed at once
            entry = _SharedInput._live.get(key)
            if entry is not None and entry.ref is ref:
                del _SharedInput._live[key]
        self.ref = weakref.ref(input, drop)

    @classmethod
    def of(cls, input):
        entry = cls._live.get(id(input))
        if entry is None or entry.ref() is not input or entry.version != input._version:
            cls.drop_all()
            entry = cls._live[id(input)] = cls(input)
        return entry

    @classmethod
    def drop_all(cls):
        cls._live.clear()

    def get(self, key, make):
        if key not in self.items:
            self.items[key] = make()
        return self.items[key]


def _shared(shared, key, make):
    return make() if shared is None else shared.get(key, make)


def _shared_input(input):
    """The _SharedInput of a plain tensor in eager mode; None under torch.compile, during
    CUDA-graph capture (a result made outside the graph would not be replayed), for tensor
    subclasses (DTensor), for inference tensors (no version counter to check) or with
    QTRAIN_SHARE_INPUT_QUANT=0."""
    if (not SHARE_INPUT or type(input) is not torch.Tensor or torch.compiler.is_compiling()
            or input.is_inference()
            or (input.is_cuda and torch.cuda.is_current_stream_capturing())):
        return None
    return _SharedInput.of(input)


class _QuantizedLinearFn(torch.autograd.Function):
    """x (M,K) @ w (N,K).T with each product's operands quantized per the plan (MM-1 NT)."""

    @staticmethod
    def forward(ctx, x, weight, sr_call, plan, backend, fqn, check, sr_seed, shared=None):
        if check:
            _check_finite(x, fqn, "input")
            _check_finite(weight, fqn, "weight")
        need_gw = ctx.needs_input_grad[1]
        gw, gi = plan.grad_weight, plan.grad_input
        # x along K (output) and along M (kept for grad_weight) with one spec: one fused cast
        # MX products on MX-10 values where the backend routes them so (RC-7's emulation): x
        # along K and w as values, x along M still kept as payload and scale bytes
        values = plan.output is not None and mx_values_route(plan.output[0], x, backend)
        both = (need_gw and plan.output is not None and gw is not None
                and gw[1] == plan.output[0] and not gw[1].axis_free and not values)
        qx_m = None
        keep_w = (plan.keep_quantized_weight and plan.output is not None and gi is not None
                  and gi[1] == plan.output[1] and gi[1].axis_free)
        # the weight's amax, once for its casts in both directions (w for the output, w.T for
        # grad_input) when both are tensorwise float8: the backward cast skips its amax pass
        w_amax = None
        if (ctx.needs_input_grad[0] and not keep_w and gi is not None and plan.output is not None
                and _tensorwise_float8(gi[1]) and _tensorwise_float8(plan.output[1])
                and type(weight) in _PLAIN_TENSORS):
            w_amax = ops.tensor_amax(weight, backend)
        if plan.output is None:
            out, qx, qw = x @ weight.t(), None, None
        else:
            # shared: keyed by what the result depends on besides the input (x's dtype too)
            if values:
                qx = _shared(shared, ("values", plan.output[0], backend, x.dtype),
                             lambda: quantize_values(x, plan.output[0], 1, backend))
            elif both:
                qx, qx_m = _shared(shared, ("both", plan.output[0], backend, x.dtype),
                                   lambda: quantize_operand_both_axes(x, plan.output[0], backend))
            elif (need_gw and gw is not None and gw[1] == plan.output[0]
                  and _tensorwise_float8(gw[1]) and TENSORWISE_TRANSPOSE == "cast"):
                # tensorwise x in both layouts from one cast: x.T is what backward keeps
                qx, qx_m = _shared(shared, ("both_t", plan.output[0], backend, x.dtype),
                                   lambda: quantize_operand_tensorwise_both(x, plan.output[0],
                                                                            backend))
            else:
                qx = _shared(shared, ("k", plan.output[0], backend, x.dtype),
                             lambda: quantize_operand(x, plan.output[0], 1, backend))
            if values:
                qw = quantize_values(weight, plan.output[1], 1, backend)
            else:
                qw = quantize_operand(weight, plan.output[1], 1, backend, amax=w_amax)
            out = _scaled_mm(qx, qw, x.dtype, backend, plan.fast_accum_output)

        if not need_gw:
            ctx.x_mode, x_saved = "none", ()
        elif gw is None:
            ctx.x_mode, x_saved = "hp", (x,)
        elif qx_m is not None:
            ctx.x_mode, x_saved = "q", qx_m.tensors()
        elif (qx is not None and not values and gw[1] == plan.output[0]
              and gw[1].axis_free):
            ctx.x_mode, x_saved = "reuse", qx.tensors()
        else:
            qx_m = _shared(shared, ("m", gw[1], backend, x.dtype),
                           lambda: quantize_operand(x, gw[1], 0, backend))
            ctx.x_mode, x_saved = "q", qx_m.tensors()
        if keep_w:
            ctx.w_mode, w_saved = "reuse", qw.tensors()
        elif w_amax is not None:
            ctx.w_mode, w_saved = "hp+amax", (weight, w_amax)
        else:
            ctx.w_mode, w_saved = "hp", (weight,)
        ctx.n_x = len(x_saved)
        ctx.save_for_backward(*x_saved, *w_saved, sr_call)
        ctx.plan, ctx.backend, ctx.fqn, ctx.check, ctx.sr_seed = plan, backend, fqn, check, sr_seed
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if not torch.compiler.is_compiling():
            _SharedInput.drop_all()       # the forward's shared quantizations: not needed now
        plan, backend = ctx.plan, ctx.backend
        saved = ctx.saved_tensors
        x_saved, w_saved, sr_call = saved[:ctx.n_x], saved[ctx.n_x:-1], saved[-1]
        g = grad_out.contiguous()
        if ctx.check:
            _check_finite(g, ctx.fqn, "grad_output")
        noise = None
        specs = [s[0] for s in (plan.grad_input, plan.grad_weight) if s is not None]
        if any(s.stochastic for s in specs):
            noise = CounterNoise(ctx.sr_seed, sr_call)                       # I8-5, I8-10

        grad_x = grad_w = None
        gi, gw = plan.grad_input, plan.grad_weight
        qg = qgt = None
        # RC-7's emulation (see forward): g along N and along M, and w along N, as values
        values_gi = gi is not None and mx_values_route(gi[0], g, backend)
        values_gw = gw is not None and mx_values_route(gw[0], g, backend)
        # one cast of g for both products where the spec allows it (values: one each, below)
        both_g = (ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and gi is not None
                  and gw is not None and gi[0] == gw[0] and not (values_gi or values_gw))
        if both_g and not gi[0].axis_free and not gi[0].stochastic:
            qg, qgt = quantize_operand_both_axes(g, gi[0], backend)   # g along N and along M
        elif both_g and _tensorwise_float8(gi[0]) and TENSORWISE_TRANSPOSE == "cast":
            qg, qgt = quantize_operand_tensorwise_both(g, gi[0], backend)  # g and g.T, one cast
        if ctx.needs_input_grad[0]:
            if gi is None:
                w = w_saved[0]
                grad_x = g.to(w.dtype) @ w
            else:
                if qg is None and values_gi:
                    qg = quantize_values(g, gi[0], 1, backend)
                elif qg is None:
                    qg = quantize_operand(g, gi[0], 1, backend,
                                          noise if gi[0].stochastic else None)
                if values_gi:
                    qwt = quantize_values(w_saved[0], gi[1], 0, backend)
                elif ctx.w_mode == "reuse":
                    qwt = QOperand(*w_saved, gi[1].pow2_factors).t()
                else:
                    qwt = quantize_operand(w_saved[0], gi[1], 0, backend,
                                           amax=w_saved[1] if ctx.w_mode == "hp+amax" else None)
                grad_x = _scaled_mm(qg, qwt, ctx.x_dtype, backend, plan.fast_accum_grads)
                if qgt is None and gw is not None and gi[0] == gw[0] and gw[0].axis_free:
                    qgt = qg.t()            # tensorwise g: one quantization serves both products
                # grad_input's operands die before grad_weight's are made (peak memory: on the
                # MX-10 values route they are bf16 copies of g and w)
                qg = qwt = None
        if ctx.needs_input_grad[1]:
            if gw is None:
                grad_w = g.t().to(ctx.w_dtype) @ x_saved[0].to(ctx.w_dtype)
            else:
                if qgt is None and values_gw:
                    qgt = quantize_values(g, gw[0], 0, backend)
                elif qgt is None:
                    qgt = quantize_operand(g, gw[0], 0, backend,
                                           noise if gw[0].stochastic else None)
                qxt = QOperand(*x_saved, gw[1].pow2_factors)
                if ctx.x_mode == "reuse":
                    qxt = qxt.t()
                grad_w = _scaled_mm(qgt, qxt, ctx.w_dtype, backend, plan.fast_accum_grads)
        return grad_x, grad_w, None, None, None, None, None, None, None


# weights whose amax the linear computes once (tensor subclasses, such as DTensor shards and
# FSDP's float8 all-gathered weight, quantize through their own dispatch)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _tensorwise_float8(spec):
    return spec is not None and spec.kind == "float8" and spec.tensorwise


def _compute_dtype(x):
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _check_enabled():
    return (not torch.compiler.is_compiling()) and os.environ.get(CHECK_FINITE_ENV) == "1"


# Stochastic-rounding call index of the functional `linear` (a QuantizedLinear has its own).
# A tensor, counted in place: torch.compile traces the increment instead of guarding on a
# Python int (which recompiled on every call).
_FUNCTIONAL_SR_CALLS = torch.zeros((), dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _cached_plan(config):
    return config.plan()


def plan_of(config):
    """config.plan(), built once per (frozen, hashable) config in eager mode: the recipe table
    does not change, and building it on every call is host time in launch-bound layers.
    (Under torch.compile it is traced once anyway, so the cache is bypassed there.)"""
    if torch.compiler.is_compiling():
        return config.plan()
    return _cached_plan(config)


def uses_stochastic_rounding(plan):
    return any(s is not None and any(spec.stochastic for spec in s)
               for s in (plan.output, plan.grad_input, plan.grad_weight))


def quantized_linear(input, weight, bias, config, backend, fqn="", sr_call=None):
    """The shared body of `linear` and `QuantizedLinear.forward` (backend already resolved).
    sr_call: the stochastic-rounding call index (I8-5), or None for the functional counter."""
    dtype = _compute_dtype(input)
    x = input if input.dtype == dtype else input.to(dtype)
    w = weight if weight.dtype == dtype else weight.to(dtype)
    plan = plan_of(config)
    seed = getattr(config, "seed", 0)
    if sr_call is None:
        sr_call = _FUNCTIONAL_SR_CALLS          # never read without stochastic rounding
        if uses_stochastic_rounding(plan):
            _FUNCTIONAL_SR_CALLS.add_(1)
            sr_call = _FUNCTIONAL_SR_CALLS.clone()
    lead = x.shape[:-1]
    shared = _shared_input(input)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return _apply(x, w, bias, dtype, lead, sr_call, plan, backend, fqn, seed, shared)
    return _apply(x, w, bias, dtype, lead, sr_call, plan, backend, fqn, seed, shared)


def _apply(x, w, bias, dtype, lead, sr_call, plan, backend, fqn, seed, shared=None):
    out = _QuantizedLinearFn.apply(x.reshape(-1, x.shape[-1]), w, sr_call, plan, backend, fqn,
                                   _check_enabled(), seed, shared)
    out = out.reshape(*lead, w.shape[0])
    if bias is not None:
        out = out + bias.to(dtype)                   # RC: bias in high precision
    return out


def linear(input, weight, bias=None, *, config):
    """Drop-in for torch.nn.functional.linear running the quantized recipe of `config`."""
    return quantized_linear(input, weight, bias, config,
                            resolve_backend_for_call(config.backend, input.device))


class QuantizedLinear(BackendBound, nn.Linear):
    """nn.Linear whose three products follow `config`'s recipe; same Parameters, same
    state_dict as the nn.Linear it replaces. The backend is resolved at construction for the
    weight's device; with `auto`, again when moved or fed another device's input
    (BackendBound)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 config, fqn=""):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(config, fqn, device)

    def _setup(self, config, fqn, device):
        self.config = config
        self.fqn = fqn
        self.bind_backend(config.backend, self.weight.device)
        # Stochastic-rounding call index (I8-5 noise seed); not part of the state_dict.
        self.register_buffer("sr_calls", torch.zeros((), dtype=torch.int64, device=device),
                             persistent=False)

    @classmethod
    def from_float(cls, mod, config, fqn=""):
        """Wrap an nn.Linear, keeping its weight and bias Parameters (no copy)."""
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, device="meta",
                  config=config, fqn=fqn)
        new.weight = mod.weight
        new.bias = mod.bias
        new.sr_calls = torch.zeros((), dtype=torch.int64, device=mod.weight.device)
        new.bind_backend(config.backend, mod.weight.device)
        new.train(mod.training)
        return new

    def forward(self, input):
        return self.forward_with(input, self.weight, self.bias)

    def forward_with(self, input, weight, bias):
        """This layer's quantized linear on the given weight and bias (tensor parallel passes
        its local shards); advances the stochastic-rounding call index."""
        sr_call = self.sr_calls                 # never read without stochastic rounding
        if uses_stochastic_rounding(plan_of(self.config)):
            self.sr_calls.add_(1)
            sr_call = self.sr_calls.clone()
        return quantized_linear(input, weight, bias, self.config,
                                self.backend_for_input(input.device), self.fqn, sr_call)

    def extra_repr(self):
        return f"{super().extra_repr()}, recipe={self.config.short_id}, backend={self.backend}"
