"""The recipe table as data (spec/07-recipes.md, RC-*): which operand of which product is
quantized how, and the one generic routine that quantizes an operand into NT form (MM-1).
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch

from . import ops
from .backend import _instance as _backend_impl

# Where a compiled graph gets the float8 tensorwise amax (F8-1), read once at import:
# "torch" (default): a torch reduction before the cast op (max |x|), which inductor can fuse
# into the kernel that produces x, so the backend runs the cast pass alone; "kernel": the
# backend's own amax pass inside the cast op. Same bits either way; eager mode always takes
# "kernel". H200, Llama3-8B block compiled, five process pairs (fourteenth and twenty-second
# sessions): torch faster in four, by 0.15 ms (1%) on average; its row-maxima-first form
# (torch_amax_rows_first) 0.14 ms faster again in three more pairs.
COMPILED_AMAX_ENV = "QTRAIN_COMPILED_AMAX"
COMPILED_AMAX = os.environ.get(COMPILED_AMAX_ENV, "torch")
if COMPILED_AMAX not in ("kernel", "torch"):
    raise ValueError(f"{COMPILED_AMAX_ENV}={COMPILED_AMAX!r}: expected 'kernel' or 'torch'")


@dataclass(frozen=True)
class QuantSpec:
    """How one operand of one product is quantized along that product's contraction axis."""
    kind: str                        # "float8" | "mx" | "int8" | "blockwise"
    fmt: str = "float8_e4m3fn"       # float8 / MX element / blockwise format
    tensorwise: bool = False         # float8 only: one scale for the tensor (axis free)
    pow2_scale: bool = False         # float8 only (F8-3)
    block_size: int = 32             # mx only (MX-1)
    scale_mode: str = "floor"        # mx only (MX-3, MX-4)
    block: tuple = (1, 128)          # blockwise only, in NT form (rows, contraction) (BW-1)
    stochastic: bool = False         # int8 only (I8-5)

    @property
    def contraction_block(self):
        """Elements per scale along the contraction axis (1 when it is not blocked)."""
        return {"mx": self.block_size, "blockwise": self.block[1]}.get(self.kind, 1)

    @property
    def pow2_factors(self):
        """True when every dequant factor is a power of two (MX-3's e8m0, F8-3's pow2 scales):
        the operand's values times any float8 code are then exact in bf16 too."""
        return self.kind == "mx" or (self.kind == "float8" and self.pow2_scale)

    @property
    def axis_free(self):
        """True when quantizing along either axis gives the same payload (can be reused
        transposed): a tensorwise scale, or a square block."""
        return self.tensorwise or (self.kind == "blockwise" and self.block[0] == self.block[1])


@dataclass(frozen=True)
class RecipePlan:
    """(A spec, B spec) for each product; None means that product runs in high precision."""
    output: Optional[tuple]          # A = x (M,K), B = w (N,K), along K
    grad_input: Optional[tuple]      # A = g (M,N), B = w.T (K,N), along N
    grad_weight: Optional[tuple]     # A = g.T (N,M), B = x.T (K,M), along M
    fast_accum_output: bool = False  # RC-3: the output product may use fast accumulation
    fast_accum_grads: bool = False   # RC-15: grad_input / grad_weight may too
    # RC-14: keep the forward's quantized w for grad_input when its quantization is axis free
    # (tensorwise, square blocks) instead of re-quantizing the parameter in backward
    keep_quantized_weight: bool = False


@dataclass(frozen=True)
class CounterNoise:
    """Stochastic-rounding noise given by its I8-10 key, drawn where the tensor is quantized
    (inside the kernel on backends that can): the config's seed and the call index tensor."""
    seed: int
    call: torch.Tensor


@dataclass
class QOperand:
    """A quantized operand in NT form: payload (R, C) contracted along C, plus its dequant
    factors laid out by the MM-1 block rule: fp32, or MX scale bytes (uint8, 1 byte per block
    while saved for backward) that `dequant_fp32` expands when the product runs."""
    payload: torch.Tensor
    dequant: torch.Tensor
    pow2: bool = False               # every factor a power of two (QuantSpec.pow2_factors)

    def dequant_fp32(self):
        d = self.dequant
        return e8m0_to_fp32(d) if d.dtype == torch.uint8 else d

    def t(self):
        """The same quantized tensor seen transposed (valid only for axis-free specs)."""
        return QOperand(self.payload.t(), self.dequant.t(), self.pow2)

    def tensors(self):
        return self.payload, self.dequant


@dataclass
class QValues:
    """An MX operand as its exact bf16 values (MX-10) in NT form: values (R, C) contracted
    along C, possibly a transposed view (the emulated product reads any strides). RC-7's
    emulated products on a backend that routes them so (mx_values_route)."""
    values: torch.Tensor


def e8m0_to_fp32_bits(scale_bits):
    """2^(b-127) built from bits (exact, 2^-127 is an fp32 subnormal); 0xFF -> NaN (MX-8)."""
    b = scale_bits.to(torch.int32)
    bits = torch.where(b == 0, torch.full_like(b, 0x00400000), b << 23)
    bits = torch.where(b == 255, torch.full_like(b, 0x7FC00000), bits)
    return bits.view(torch.float32)


_E8M0_TABLES = {}        # device -> fp32 (256,): e8m0_to_fp32_bits of every byte


def e8m0_to_fp32(scale_bits):
    """e8m0_to_fp32_bits, in eager mode as a lookup in the 256-entry table of that function
    (same bits; two kernels per call instead of seven, which launch-bound layers feel). Under
    torch.compile, CUDA-graph capture or a tensor subclass: the formula itself."""
    dev = scale_bits.device
    if (type(scale_bits) is not torch.Tensor or torch.compiler.is_compiling()
            or (dev.type == "cuda" and torch.cuda.is_current_stream_capturing())):
        return e8m0_to_fp32_bits(scale_bits)
    table = _E8M0_TABLES.get(dev)
    if table is None:
        table = _E8M0_TABLES[dev] = e8m0_to_fp32_bits(
            torch.arange(256, dtype=torch.int32, device=dev).to(torch.uint8))
    return table[scale_bits.to(torch.int32)]


def _pad_contraction(t, axis, multiple):
    """Zero-pad the contraction axis up to a multiple of the block. Zeros change no amax and
    add nothing to the product, so a ragged last block acts as a short block. This is what
    lets M (tokens) be any length for the MX and blockwise grad_weight products."""
    rem = t.shape[axis] % multiple
    if rem == 0:
        return t
    pad = [0, 0, 0, 0]
    pad[3 - 2 * axis] = multiple - rem          # F.pad lists the last axis first
    return torch.nn.functional.pad(t, pad)


def torch_amax_rows_first(t):
    """t's F8-1 amax (max |x|, NaN propagates: torch's amax does at each stage) as torch ops,
    row maxima first. Under torch.compile a reduction over t's rows has the iteration space of
    the pointwise kernel that writes t, so inductor fuses the two into one kernel; a whole-
    tensor amax is split over flat chunks instead and recomputes t's producer in a separate
    reduction (H200, Llama3-8B block compiled: the MLP's h = silu(a) * b and its gradient,
    0.14 ms a step, twenty-second session)."""
    return t.abs().amax(dim=-1).amax().to(torch.float32)


def _compiled_torch_amax(t):
    """t's F8-1 amax as a torch reduction while torch.compile traces with
    QTRAIN_COMPILED_AMAX=torch, for inductor to fuse into t's producer; else None (the
    tensorwise cast computes it itself)."""
    if COMPILED_AMAX == "torch" and t.numel() and torch.compiler.is_compiling():
        return torch_amax_rows_first(t)
    return None


def quantize_operand(t, spec, contraction_axis, backend, noise=None, amax=None):
    """Quantize 2-D `t` along `contraction_axis` (0 or 1) and return it in NT form:
    contraction along the last axis of the payload (MM-1). Along axis 0 the backend quantizes
    t.T (`transposed=True`): a fast backend writes that layout straight from t, so the product
    gets row-major operands without a transpose copy. `noise` comes in t's layout, or is a
    CounterNoise (I8-10 noise of t's elements). `amax`: t's F8-1 amax (ops.tensor_amax), for a
    tensorwise float8 spec only; the cast then skips its amax pass (same bits)."""
    transpose = contraction_axis == 0
    if amax is not None and not (spec.kind == "float8" and spec.tensorwise):
        raise ValueError(f"quantize_operand: amax is given only for a tensorwise float8 spec, "
                         f"got {spec}")
    t = _pad_contraction(t, contraction_axis, spec.contraction_block)
    if spec.kind == "float8":
        if amax is None and spec.tensorwise:
            amax = _compiled_torch_amax(t)
        if amax is not None:      # the cast gives its dequant factor (no reciprocal launch)
            data, _, dequant = ops.quantize_float8_given_amax(t, amax, spec.fmt, spec.pow2_scale,
                                                              backend, transposed=transpose)
            dequant = dequant.reshape(1, 1)
        elif spec.tensorwise:
            data, quant_scale = ops.quantize_float8(t, spec.fmt, None, spec.pow2_scale, backend,
                                                    transposed=transpose)
            dequant = ops.dequant_of(quant_scale).reshape(1, 1)
        else:                     # the cast gives its dequant factors (no reciprocal launch)
            data, _, dequant = ops.quantize_float8_axiswise(t, spec.fmt, spec.pow2_scale,
                                                            backend, transposed=transpose)
    elif spec.kind == "mx":
        data, dequant = ops.quantize_mx(t, spec.fmt, spec.block_size, -1, spec.scale_mode,
                                        backend, transposed=transpose)
        # dequant: the e8m0 bytes, expanded by QOperand.dequant_fp32 when the product runs
    elif spec.kind == "int8":
        if isinstance(noise, CounterNoise):
            data, dequant = ops.quantize_int8(t, -1, None, backend, transposed=transpose,
                                              noise_seed=noise.seed, noise_call=noise.call)
        else:
            if noise is not None and transpose:
                noise = noise.t()
            data, dequant = ops.quantize_int8(t, -1, noise, backend, transposed=transpose)
    elif spec.kind == "blockwise":
        # Along axis 0 the backend quantizes t.T, in t.T's layout. For a square block that is
        # t's quantization transposed (BW-5), and the call differs from the forward's cast of t
        # on purpose: torch.compile merges identical pure calls, and merging RC-14's backward
        # re-quantization of w into the forward's cast would keep the quantized w from the
        # forward in every compiled graph (RC-14 keeps it only with keep_quantized_weight).
        data, _, dequant = ops.quantize_blockwise_with_dequant(t, list(spec.block), spec.fmt,
                                                               backend, transposed=transpose)
    else:
        raise ValueError(f"unknown QuantSpec.kind {spec.kind!r}")
    return QOperand(data, dequant, spec.pow2_factors)


def mx_values_route(spec, t, backend):
    """Whether the products that read `t` with MX spec `spec` run on MX-10 values (QValues):
    the backend says so for t (fast: bf16 t on CUDA, fast/scaled_mm.py mx_values_route)."""
    if spec is None or spec.kind != "mx":
        return False
    route = getattr(_backend_impl(backend), "mx_values_route", None)
    return route is not None and route(t)


def quantize_values(t, spec, contraction_axis, backend):
    """2-D t's MX-10 values along `contraction_axis`, in NT form (a transposed view along axis
    0: the values are written in t's layout, and the product reads any strides)."""
    t = _pad_contraction(t, contraction_axis, spec.contraction_block)
    axis = -1 if contraction_axis else 0
    values = ops.quantize_mx_values(t, spec.fmt, spec.block_size, axis, spec.scale_mode, backend)
    return QValues(values if contraction_axis else values.t())


def quantize_operand_tensorwise_both(t, spec, backend, amax=None):
    """(t along axis 1, t along axis 0), both in NT form, for a tensorwise float8 spec: one
    scale serves both, so the payload of the second is the first's transposed (RC-4). The
    backend writes both layouts from one cast (ops.quantize_float8_both_layouts) instead of a
    transposed copy of the payload later. 2-D t."""
    if not (spec.kind == "float8" and spec.tensorwise) or t.dim() != 2:
        raise ValueError(f"quantize_operand_tensorwise_both: needs a tensorwise float8 spec and "
                         f"2-D t, got {spec} and shape {tuple(t.shape)}")
    if amax is None:
        amax = _compiled_torch_amax(t)
    data, data_t, _, dequant = ops.quantize_float8_both_layouts(t, spec.fmt, spec.pow2_scale,
                                                                backend, amax)
    dequant = dequant.reshape(1, 1)
    return (QOperand(data, dequant, spec.pow2_factors),
            QOperand(data_t, dequant, spec.pow2_factors))


def quantize_operand_both_axes(t, spec, backend):
    """(t quantized along axis 1, t quantized along axis 0) both in NT form, for a tensor that
    feeds one product along each axis with the same spec (rowwise x and g). Float8 axiswise and
    int8 rne go through the dual ops: one read of t where the backend fuses them (fast does for
    float8), else the two casts."""
    if spec.kind == "float8" and not spec.tensorwise:
        data, _, data_t, _, dq, dq_t = ops.quantize_float8_dual(t, spec.fmt, spec.pow2_scale,
                                                                backend)
        return (QOperand(data, dq, spec.pow2_factors), QOperand(data_t, dq_t, spec.pow2_factors))
    if spec.kind == "int8" and not spec.stochastic:
        data, ds, data_t, ds_t = ops.quantize_int8_dual(t, None, backend)
        return QOperand(data, ds), QOperand(data_t, ds_t)
    return quantize_operand(t, spec, 1, backend), quantize_operand(t, spec, 0, backend)
