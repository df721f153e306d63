"""Quantized grouped matrix product for MoE experts, spec/07 RC-13 over spec/06 MM-5. (The file
is named qgrouped_mm so that it does not shadow the public function `qtrain.grouped_mm`.)

`grouped_mm(x, w, offs, config)`: x (M, K) tokens sorted by expert, w (E, N, K) one
nn.Linear-style weight per expert, offs int32 (E,) cumulative group ends (MM-5). Returns
(M, N) with out[r] = x[r] @ w[g].T for the rows r of group g and +0 for rows past offs[-1]
(the MM-5 rule; torch._grouped_mm(x, w.transpose(-2, -1), offs=offs) leaves them unwritten).

The three products follow the linear recipe table (config.plan(grouped=True), RC-5 / RC-7)
with RC-13's grouping; RC-15's default lets all three accumulate fast on fp8 tensor cores:
| product     | A                                   | B                                       |
|-------------|-------------------------------------|-----------------------------------------|
| output      | x along K, per token (M, 1) / MX    | w[g] along K, per (expert, n) / MX      |
| grad_input  | g along N, per token (M, 1) / MX    | w[g] along N, per (expert, k) / MX      |
| grad_weight | g along tokens, per (group, n)      | x along tokens, per (group, k)          |
grad_weight scales are computed WITHIN each group, never across a boundary: float8 rowwise
through the per-group cast (qtrain/grouped_ops.py), MX with blocks of block_size tokens that
start at each group's first token (groups zero-padded up to the block, qtrain/grouping.py).
Group sizes are free (empty groups, any length); padding is built on the device (no host
sync) and never changes a result. Supported: Float8LinearConfig(recipe="rowwise") and
MXLinearConfig (grad_weight_hp included). Kept for backward: x quantized along tokens for
grad_weight (1 byte per element plus scales; hp x with grad_weight_hp), w itself, offs, and
the padded token layout that g reuses (its padded group ends).
"""
import logging

import torch

from . import grouped_ops, ops  # noqa: F401  (ops registers the qtrain:: quantize ops)
from .backend import resolve_backend_for_call
from .config import Float8LinearConfig, MXLinearConfig
from .moe_weight import capturing as _capturing, operand_tensors, plain
from .qlinear import _mm_dtype
from .recipes import QOperand, mx_values_route, quantize_operand, quantize_values

# The MX products on MX-10 values (RC-7's emulation, as the dense linear takes them where
# recipes.mx_values_route says so): x along K, w along K and N, g along N and along tokens cast
# straight to bf16 values, x along tokens kept as payload. On since the twenty-first session:
# the MoE step (benchmarks/moe_bench.py, E8 16384x4096 -> 2048, H200, alternating processes in
# one call) took 2.46 / 2.78 ms with it against 3.63 / 4.22 ms on payload and scale bytes
# (bf16 1.09 ms). False keeps the payload route (the reference backend's products on payload).
MX_VALUES = True

LAYER = "qtrain.grouped_mm"
log = logging.getLogger("qtrain")
FLOAT8_ALIGN = 16         # torch._scaled_grouped_mm needs 16-token aligned groups (2d x 2d)


def _quantize_3d(w, spec, along_k, backend):
    """w (E, N, K) per expert, along K (output) or along N (grad_input, as B = w[g].T (K, N)).
    Returns (payload (E, R, C), fp32 factors (E, R, C / block)) in NT form."""
    e, n, k = w.shape
    if not along_k and spec.kind == "float8" and not spec.tensorwise:
        # one pass over w writes every w[g].T quantized (no transpose copy of w first)
        data, _, dq = grouped_ops.quantize_float8_experts_t(w, spec.fmt, spec.pow2_scale,
                                                            backend)
        return data, dq.unsqueeze(-1)
    src = w if along_k else w.transpose(1, 2).contiguous()
    q = quantize_operand(src.reshape(-1, src.shape[-1]), spec, 1, backend)
    rows, cols = src.shape[1], src.shape[2]
    return q.payload.reshape(e, rows, cols), q.dequant_fp32().reshape(e, rows, -1)


def _values_3d(w, spec, along_k, backend):
    """w (E, N, K)'s MX-10 values per expert in NT form: along K (E, N, K), or along N as
    B = w[g].T, a (E, K, N) view. Blocks along N are 32-row blocks of w viewed (E * N, K),
    which never straddle experts (N % 32 == 0, RC-11)."""
    e, n, k = w.shape
    v = ops.quantize_mx_values(w.reshape(e * n, k), spec.fmt, spec.block_size,
                               -1 if along_k else 0, spec.scale_mode, backend).reshape(e, n, k)
    return v if along_k else v.transpose(1, 2)


def _token_align(spec):
    """The multiple each group's token count is padded to for grad_weight's 2d x 2d product."""
    return FLOAT8_ALIGN if spec.kind == "float8" else spec.block_size


def _grad_weight_operand(t, offs, spec, backend, pends=None, values=False):
    """t (M, C) (g or x) quantized along tokens within each group, in NT form for the 2d x 2d
    product over the padded token layout: (payload (C, Mp), factors, pends), pends = the
    padded group ends. `pends`: when already known (x's, reused for g: same groups, same
    layout)."""
    align = _token_align(spec)
    if pends is None:
        pends = grouped_ops.padded_offsets(offs, align, backend)
    if spec.kind == "float8":
        data_t, _, dq = grouped_ops.quantize_float8_grouped_t(t, offs, align, spec.fmt,
                                                              spec.pow2_scale, backend, pends)
        return data_t, dq.unsqueeze(-1), pends
    tp = grouped_ops.pad_groups(t, offs, align, pends, backend)   # blocks never straddle groups
    if values:                                                # MX-10 values along tokens
        return quantize_values(tp, spec, 0, backend).values, None, pends
    q = quantize_operand(tp, spec, 0, backend)                # MX along tokens: (C, Mp) view
    return q.payload, q.dequant, pends                        # e8m0 bytes while saved


def _check(x, w, offs, config):
    if not isinstance(config, (Float8LinearConfig, MXLinearConfig)) or (
            isinstance(config, Float8LinearConfig) and config.recipe != "rowwise"):
        raise NotImplementedError(
            f"{LAYER}: grouped products support Float8LinearConfig(recipe='rowwise') and "
            f"MXLinearConfig, got {config!r}")
    if x.dim() != 2 or w.dim() != 3 or x.shape[1] != w.shape[2]:
        raise ValueError(f"{LAYER}: expected x (M, K) and w (E, N, K), got x {tuple(x.shape)} "
                         f"and w {tuple(w.shape)}")
    if w.device != x.device or offs.device != x.device:
        raise ValueError(f"{LAYER}: x, w and offs must be on one device, got x on {x.device}, "
                         f"w on {w.device}, offs on {offs.device}")
    if offs.dtype != torch.int32 or offs.shape != (w.shape[0],):
        raise ValueError(f"{LAYER}: offs must be int32 of shape (E,) = ({w.shape[0]},) "
                         f"cumulative group ends (MM-5), got {offs.dtype} {tuple(offs.shape)}")
    multiple = config.min_multiple
    n, k = w.shape[1], w.shape[2]
    if n % multiple or k % multiple:
        raise ValueError(f"{LAYER}: expert weight (N, K) = ({n}, {k}) must have N and K "
                         f"multiples of {multiple} for {config.short_id} (RC-11)")


class _QuantizedGroupedMMFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, w, offs, plan, backend):
        w = plain(w)                    # a converted module's GroupedExpertsWeight (moe.py)
        out = _output_product(x, _output_weight_operand(w, x, plan, backend), offs, plan,
                              backend)
        gw = plan.grad_weight
        if not ctx.needs_input_grad[1]:
            x_saved = ()
        elif gw is None:
            x_saved = (x,)
        else:
            x_saved = _grad_weight_operand(x, offs, gw[1], backend)
        ctx.n_x = len(x_saved)
        ctx.save_for_backward(*x_saved, w, offs)
        ctx.plan, ctx.backend, ctx.x_dtype = plan, backend, x.dtype
        return _as_dtype(out, x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        plan, backend = ctx.plan, ctx.backend
        saved = ctx.saved_tensors
        x_saved, w, offs = saved[:ctx.n_x], saved[ctx.n_x], saved[ctx.n_x + 1]
        g = _as_dtype(grad_out.contiguous(), ctx.x_dtype)
        out_dtype = _mm_dtype(ctx.x_dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and _values(plan.grad_input[0], g, backend):
            gi = plan.grad_input
            grad_x = grouped_ops.mm_mx_values_grouped(
                quantize_values(g, gi[0], 1, backend).values, None,
                _values_3d(w, gi[1], False, backend), None, offs, backend)
            grad_x = _as_dtype(grad_x, ctx.x_dtype)
        elif ctx.needs_input_grad[0]:
            gi = plan.grad_input
            qg = quantize_operand(g, gi[0], 1, backend)
            qwt, dwt = _quantize_3d(w, gi[1], False, backend)
            grad_x = grouped_ops.scaled_grouped_mm(qg.payload, qg.dequant_fp32(), qwt, dwt,
                                                   offs, out_dtype, backend, 1, _pow2(gi),
                                                   plan.fast_accum_grads)
            grad_x = _as_dtype(grad_x, ctx.x_dtype)
            qg = qwt = dwt = None       # freed before grad_weight's operands are made (peak)
        if ctx.needs_input_grad[1]:
            gw = plan.grad_weight
            if gw is None:
                grad_w = _grad_weight_hp(g, x_saved[0], offs, backend)
            else:
                b, db, x_pends = x_saved
                values = _values(gw[0], g, backend)
                a, da, pends = _grad_weight_operand(g, offs, gw[0], backend,
                                                    x_pends if gw[0] == gw[1] else None, values)
                align = _token_align(gw[0])
                if values:                 # g's values against x's kept payload
                    grad_w = grouped_ops.mm_mx_values_grouped(
                        a, None, b, QOperand(b, db).dequant_fp32(), pends, backend, align)
                else:
                    da, db = QOperand(a, da).dequant_fp32(), QOperand(b, db).dequant_fp32()
                    grad_w = grouped_ops.scaled_grouped_mm(a, da, b, db, pends, out_dtype,
                                                           backend, align, _pow2(gw),
                                                           plan.fast_accum_grads)
            grad_w = _as_dtype(grad_w, w.dtype)
        return grad_x, grad_w, None, None, None


def _output_weight_operand(w, x, plan, backend):
    """The output product's B operand from w (E, N, K) for tokens x."""
    return _weight_operand(w, plan, backend, _values(plan.output[0], x, backend))


def _weight_operand(w, plan, backend, values):
    """The output product's B operand from w (E, N, K): MX-10 values, or (payload, factors)."""
    if values:
        return _values_3d(w, plan.output[1], True, backend)
    return _quantize_3d(w, plan.output[1], True, backend)


def _output_product(x, w_operand, offs, plan, backend):
    """out = x @ w[g].T per group (MM-5) in _mm_dtype(x.dtype), x quantized along K."""
    if _values(plan.output[0], x, backend):
        return grouped_ops.mm_mx_values_grouped(
            quantize_values(x, plan.output[0], 1, backend).values, None, w_operand, None,
            offs, backend)
    qx = quantize_operand(x, plan.output[0], 1, backend)
    qw, dw = w_operand
    return grouped_ops.scaled_grouped_mm(qx.payload, qx.dequant_fp32(), qw, dw, offs,
                                         _mm_dtype(x.dtype), backend, 1, _pow2(plan.output),
                                         plan.fast_accum_output)


def _as_dtype(t, dtype):
    """t in dtype, t itself when it is already (no aliasing no-op .to() node in a traced graph:
    torch 2.11's AOT autograd gave a forward output that aliased another traced value a zero
    gradient, so compiled grouped_mm lost grad_input and grad_weight; H200, 2026-12-04)."""
    return t if t.dtype == dtype else t.to(dtype)


def _values(spec, t, backend):
    """Whether this product's MX operands go as MX-10 values (MX_VALUES and the backend's
    route for t, recipes.mx_values_route)."""
    return MX_VALUES and mx_values_route(spec, t, backend)


def _pow2(specs):
    """Both operands' factors powers of two (rowwise pow2, MX): the products' hint."""
    return specs[0].pow2_factors and specs[1].pow2_factors


def _grad_weight_hp(g, x, offs, backend):
    """grad_weight_hp (RC-7): g[rows_g].T @ x[rows_g] per group in the model dtype, over the
    padded layout (16-byte aligned group starts); empty groups give zeros."""
    pends = grouped_ops.padded_offsets(offs, 8, backend)      # same groups: one layout
    gp = grouped_ops.pad_groups(g, offs, 8, pends, backend)
    xp = grouped_ops.pad_groups(x, offs, 8, pends, backend)
    out = torch._grouped_mm(gp.t().contiguous(), xp, offs=pends)
    sizes = torch.diff(pends, prepend=pends.new_zeros(1))
    return torch.where((sizes > 0)[:, None, None], out,
                       torch.zeros((), dtype=out.dtype, device=out.device))


class FrozenOperand:
    """The output product's weight operand of a frozen expert weight, kept for serving: made
    once, and refreshed in place (same tensors, new values) when the weight is written, so
    a CUDA graph that reads it stays right across in-place writes (moe_weight's
    __torch_dispatch__ calls `refresh` on every write outside capture and compilation)."""

    def __init__(self, hp, dtype, plan, backend, values, version, used=True):
        self.hp, self.dtype, self.plan, self.backend, self.values = hp, dtype, plan, backend, values
        self.operand = self._make()
        self.version = version
        self.used = used          # False: made ahead (keep_frozen_operand), not read yet

    def _make(self):
        return _frozen_operand(self.hp, self.dtype, self.plan, self.backend, self.values)

    def refresh(self, version):
        # inference mode: the kept tensors may be inference tensors (made under
        # torch.inference_mode), which only take in-place writes there
        with torch.inference_mode():
            for kept, fresh in zip(operand_tensors(self.operand), operand_tensors(self._make())):
                kept.copy_(fresh)
        self.version = version


_LOGGED_CAPTURE = []


def _frozen_operand(hp, dtype, plan, backend, values):
    """The output product's operand of weight hp for tokens of `dtype` (w cast to it first, as
    grouped_mm does)."""
    return _weight_operand(_as_dtype(hp, dtype).contiguous(), plan, backend, values)


def _frozen_key(hp, x, backend, values):
    return (tuple(hp.shape), tuple(hp.stride()), hp.storage_offset(), x.dtype, backend, values)


def keep_frozen_operand(w, config, cache, version):
    """Make the kept operand that grouped_mm_frozen reads for tokens in w's dtype on w's device
    (qtrain.to_inference calls it when it freezes w, so that a model compiled before any eager
    call reads it too). Nothing for a meta weight or one that keeps copies already. Tokens of
    another dtype make their own copy on their first eager call, which then replaces this
    one if it was never read (a compiled graph takes a weight's copy only while it keeps one)."""
    hp = plain(w)
    if hp.device.type == "meta" or cache:
        return
    try:
        backend = resolve_backend_for_call(config.backend, hp.device)
    except RuntimeError as e:        # the first call raises it, where the tokens are known
        log.info("%s: no quantized copy kept ahead for a frozen %s weight on %s (%s); the "
                 "first call makes it", LAYER, config.short_id, hp.device, e)
        return
    plan = config.plan(grouped=True)
    x = hp.new_empty((0, hp.shape[-1]))                       # the tokens' dtype and device
    values = _values(plan.output[0], x, backend)
    cache[_frozen_key(hp, x, backend, values)] = FrozenOperand(hp, hp.dtype, plan, backend,
                                                               values, version, used=False)


def grouped_mm_frozen(x, w, offs, config, cache, version):
    """The output of grouped_mm for a weight that takes no gradient (serving, frozen experts)
    and an x that takes none either, with w's quantized operand kept in `cache` (a dict, one
    per weight: moe_weight's GroupedExpertsWeight holds it, shared with its views) as a
    FrozenOperand: made at freeze time or on the first call, refreshed when `version`
    (moe_weight counts in-place writes) is newer than it. Under CUDA-graph capture a current
    operand is read by the graph (later writes refresh it in place); without one the product
    quantizes w inside the graph (one log line). Traced by torch.compile, the kept operand is
    one the traced weight carries (moe_weight's __tensor_flatten__), read without a version
    check; without one w is quantized in the graph. The same bits as grouped_mm's forward."""
    _check(x, w, offs, config)
    backend = resolve_backend_for_call(config.backend, x.device)
    plan = config.plan(grouped=True)
    hp = plain(w)
    x = x.contiguous()
    values = _values(plan.output[0], x, backend)
    key = _frozen_key(hp, x, backend, values)
    entry = cache.get(key)
    if torch.compiler.is_compiling():
        # traced: a frozen weight's kept operand is an input of the graph (moe_weight's
        # __tensor_flatten__), refreshed in place by eager writes; without one, quantized here
        operand = entry.operand if entry is not None else _frozen_operand(
            hp, x.dtype, plan, backend, values)
        return _as_dtype(_output_product(x, operand, offs, plan, backend), x.dtype)
    capturing = _capturing(x)
    if not capturing:
        if entry is None:
            for unused in [k for k, e in cache.items() if not e.used]:
                del cache[unused]                  # made ahead for tokens of another dtype
            entry = cache[key] = FrozenOperand(hp, x.dtype, plan, backend, values, version)
        elif entry.version != version:
            entry.refresh(version)
        entry.used = True
    if entry is not None and entry.version == version:
        operand = entry.operand
    else:
        if not _LOGGED_CAPTURE:
            _LOGGED_CAPTURE.append(True)
            log.info("%s: a frozen expert weight without a current quantized copy under CUDA-graph "
                     "capture quantizes inside the graph on every replay (call the layer once "
                     "before capturing to keep one copy that in-place writes refresh)", LAYER)
        operand = _frozen_operand(hp, x.dtype, plan, backend, values)
    return _as_dtype(_output_product(x, operand, offs, plan, backend), x.dtype)


def grouped_mm(x, w, offs, config):
    """Quantized `x @ w[g].T` per token group (see the module docstring). x (M, K), w (E, N, K),
    offs int32 (E,) cumulative ends; returns (M, N) in x's dtype, differentiable in x and w."""
    _check(x, w, offs, config)
    backend = resolve_backend_for_call(config.backend, x.device)
    if w.dtype != x.dtype:
        w = w.to(x.dtype)
    return _QuantizedGroupedMMFn.apply(x.contiguous(), w.contiguous(), offs,
                                       config.plan(grouped=True), backend)
