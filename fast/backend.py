"""FastBackend: the brief's torch-level backend interface on Triton kernels and torch scaled
products (the registry in qtrain/backend.py picks it by name "fast")."""
import os

import torch

LAYER = "qtrain.fast.backend"
# QTRAIN_FAST_CAST_DEQUANT: the float8 casts write each dequant factor 1 / quant_scale from the
# kernel ("1", the default), or the caller computes it with torch.reciprocal, one launch per
# operand ("0": the path before 2026-12-01's seventh session, kept to time the two against
# each other). Same bits either way.
CAST_DEQUANT_ENV = "QTRAIN_FAST_CAST_DEQUANT"
CAST_DEQUANT = os.environ.get(CAST_DEQUANT_ENV, "1") != "0"


def _call_on(counter_noise, device):
    """counter_noise (seed, call index) with the call index on `device`, where the kernels read
    it: the functional qtrain.linear counts calls on the CPU (a host-to-device copy, not a
    sync); a QuantizedLinear's counter is a buffer on its own device already."""
    return None if counter_noise is None else (counter_noise[0], counter_noise[1].to(device))


def _need_2d(x):
    if x.dim() != 2:
        raise ValueError(f"{LAYER}: transposed quantization needs a 2-D tensor, got shape "
                         f"{tuple(x.shape)}")


class FastBackend:
    """name "fast". available() is True only on CUDA with compute capability >= 8.9 (fp8 tensor
    cores) and Triton importable. allow_interpreter=True additionally lets the cast kernels run
    on CPU tensors when TRITON_INTERPRET=1 was set before import (the CI test path); it never
    makes available() True."""

    name = "fast"

    def __init__(self, allow_interpreter: bool = False):
        self.allow_interpreter = allow_interpreter
        self._runnable = {}
        self._available = None

    def available(self):
        """(ok, reason), asked once: every layer call resolves its backend (qtrain/backend.py)
        and the answer cannot change within a process."""
        if self._available is None:
            self._available = self._ask_available()
        return self._available

    def _ask_available(self):
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return False, f"{LAYER}: triton is not importable ({e}); pip install triton"
        if not torch.cuda.is_available():
            return False, f"{LAYER}: no CUDA device; use the reference backend"
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            return False, (f"{LAYER}: compute capability {major}.{minor} has no float8 tensor "
                           f"cores (needs >= 8.9); use the reference backend")
        return True, ""

    def runnable_on(self, device: torch.device):
        """(ok, reason) for running the kernels on tensors of `device`."""
        device = torch.device(device)
        if device.type == "cuda":
            return self.available()
        if device.type == "cpu" and self.allow_interpreter:
            from .common import is_interpreted
            from .cast_float8 import _float8_rowwise_kernel
            if is_interpreted(_float8_rowwise_kernel):
                return True, ""
            return False, (f"{LAYER}: CPU tensors need TRITON_INTERPRET=1 set before qtrain.fast "
                           f"is imported")
        return False, f"{LAYER}: device {device} not supported (CUDA, or CPU with the interpreter)"

    def _check(self, x):
        # cached per device: the answer cannot change within a process, and the check runs on
        # every call (host time counts in launch-bound layers)
        key = x.device
        known = self._runnable.get(key)
        if known is None:
            known = self._runnable[key] = self.runnable_on(key)
        if not known[0]:
            raise RuntimeError(known[1])

    def tensor_amax(self, x):
        """max |x| as one fp32 element, NaN when x holds a NaN (F8-1): the amax pass alone."""
        from .amax import amax_bits_2d
        from .common import flat_2d
        self._check(x)
        return amax_bits_2d(flat_2d(x), tensor=True)[0].view(torch.float32)

    def quantize_float8_given_amax(self, x, amax, fmt, pow2_scale=False, transposed=False):
        """Tensorwise cast of x whose amax the caller computed (the cast pass alone):
        (data, quant_scale, dequant), dequant = 1 / quant_scale written by the cast kernel."""
        from .cast_float8 import quantize_float8_tensorwise
        self._check(x)
        if transposed:
            _need_2d(x)
        return quantize_float8_tensorwise(x, fmt, pow2_scale, transposed=transposed, amax=amax,
                                          with_dequant=CAST_DEQUANT)

    def quantize_float8_both_layouts(self, x, fmt, pow2_scale=False, amax=None):
        """Tensorwise x and x.T (row-major) from one amax pass and one cast pass:
        (data, data_t, quant_scale, dequant), dequant as in quantize_float8_given_amax."""
        from .cast_float8 import quantize_float8_tensorwise_both
        self._check(x)
        _need_2d(x)
        return quantize_float8_tensorwise_both(x, fmt, pow2_scale, amax=amax,
                                               with_dequant=CAST_DEQUANT)

    def quantize_float8(self, x, fmt, axis=None, pow2_scale=False, transposed=False):
        """transposed=True: quantize x.T (2-D), its layout written directly from x."""
        from .cast_float8 import (quantize_float8, quantize_float8_columnwise,
                                  quantize_float8_tensorwise)
        self._check(x)
        if not transposed:
            return quantize_float8(x, fmt, axis, pow2_scale)
        _need_2d(x)
        if axis is None:         # one scale: the cast pass writes x.T (no copy)
            return quantize_float8_tensorwise(x, fmt, pow2_scale, transposed=True)
        if axis in (-1, 1):      # along the last axis of x.T = axis 0 of x
            return quantize_float8_columnwise(x, fmt, pow2_scale, transposed=True)
        return quantize_float8(x.t().contiguous(), fmt, axis, pow2_scale)

    def quantize_float8_axiswise(self, x, fmt, pow2_scale=False, transposed=False):
        """Along the last axis of x (transposed: of x.T, written from x): (data, quant_scale,
        dequant), the dequant factors written by the cast kernel; without them when
        QTRAIN_FAST_CAST_DEQUANT=0 (ops.quantize_float8_axiswise then computes them)."""
        from .cast_float8 import quantize_float8_columnwise, quantize_float8_rowwise
        self._check(x)
        if not transposed:
            return quantize_float8_rowwise(x, fmt, pow2_scale, with_dequant=CAST_DEQUANT)
        _need_2d(x)
        return quantize_float8_columnwise(x, fmt, pow2_scale, transposed=True,
                                          with_dequant=CAST_DEQUANT)

    def quantize_float8_dual(self, x, fmt, pow2_scale=False):
        """(data, quant_scale, data_t, quant_scale_t, dequant, dequant_t): the dequant factors
        written by the cast kernel (ops.quantize_float8_dual)."""
        from .cast_float8 import quantize_float8_dual
        self._check(x)
        return quantize_float8_dual(x, fmt, pow2_scale, with_dequant=CAST_DEQUANT)

    def quantize_mx(self, x, elem_fmt, block_size=32, axis=-1, scale_mode="floor",
                    transposed=False):
        from .cast_mx import quantize_mx, quantize_mx_dim0
        self._check(x)
        if not transposed:
            return quantize_mx(x, elem_fmt, block_size, axis, scale_mode)
        _need_2d(x)
        if axis in (-1, 1):      # blocks along the last axis of x.T = axis 0 of x
            return quantize_mx_dim0(x, elem_fmt, block_size, scale_mode, transposed=True)
        return quantize_mx(x.t().contiguous(), elem_fmt, block_size, axis, scale_mode)

    def quantize_mx_values(self, x, elem_fmt, block_size=32, axis=-1, scale_mode="floor"):
        """MX-10: bf16 values of x's MX quantization along axis (-1 or 0), one pass."""
        from .cast_mx_values import quantize_mx_values
        self._check(x)
        return quantize_mx_values(x, elem_fmt, block_size, axis, scale_mode)

    def mx_values_route(self, t):
        """Whether the MX products on t (linear, grouped) run on MX-10 values
        (fast/scaled_mm.py)."""
        from .scaled_mm import mx_values_route
        return mx_values_route(t)

    def mm_mx_values(self, a, a_dequant, b, b_dequant):
        from .scaled_mm import mx_values_product
        self._check(a)
        return mx_values_product(a, a_dequant, b, b_dequant)

    draws_counter_noise = True         # quantize_int8 takes counter_noise (qtrain/ops.py)

    def quantize_int8(self, x, axis, noise=None, seed=None, transposed=False,
                      counter_noise=None):
        """counter_noise: (seed, call index) for I8-10 noise drawn in the kernel, indexed by
        x's elements also when transposed (the flat index of the tensor the caller holds)."""
        from .cast_int8 import quantize_int8
        self._check(x)
        counter_noise = _call_on(counter_noise, x.device)
        if not transposed:
            return quantize_int8(x, axis, noise, seed, counter_noise=counter_noise)
        _need_2d(x)
        # noise comes in x.T's layout: back to x's (no copy when it is a transposed view, as
        # the recipe passes it)
        noise_x = None if noise is None else noise.t().contiguous()
        if axis in (-1, 1) and seed is None:   # along axis 0 of x, written as x.T (no copy)
            return quantize_int8(x, 0, noise_x, None, transposed=True,
                                 counter_noise=counter_noise)
        # otherwise quantize along the matching axis of x and transpose the 1-byte payload
        axis_x = None if axis is None else (0 if axis in (-1, 1) else 1)
        data, scale = quantize_int8(x, axis_x, noise_x, seed, counter_noise=counter_noise)
        return data.t().contiguous(), scale.t().contiguous() if scale.dim() == 2 else scale

    def uniform_noise(self, like, seed, call):
        """I8-10 stochastic-rounding noise, one Triton pass, the call index read on the device."""
        from .noise import uniform_noise
        self._check(like)
        return uniform_noise(like, *_call_on((seed, call), like.device))

    # No quantize_int8_dual: qtrain/ops.py then issues the two casts (rowwise, and the column
    # cast written as x.T). The one-read kernel cast_int8.quantize_int8_dual gives the same bits
    # but measured slower on the H200 (2026-12-01, 8192^2 bf16: 426-431 us against 69-71 +
    # 173-177 us for the two; benchmarks/results/2026-12-01-gpu-fast-check*-h200.csv).

    def quantize_blockwise(self, x, block=(1, 128), fmt="float8_e4m3fn", transposed=False):
        """transposed=True: quantize x.T, (1, b) blocks written from x in one pass."""
        from .cast_blockwise import quantize_blockwise, quantize_blockwise_t
        self._check(x)
        if transposed:
            return quantize_blockwise_t(x, block, fmt)
        return quantize_blockwise(x, block, fmt)

    def quantize_blockwise_with_dequant(self, x, block=(1, 128), fmt="float8_e4m3fn",
                                        transposed=False):
        """quantize_blockwise and its dequant factors 1 / quant_scale, written by the cast
        kernels: (data, quant_scale, dequant); without them when QTRAIN_FAST_CAST_DEQUANT=0
        (ops.quantize_blockwise_with_dequant then computes them)."""
        from .cast_blockwise import quantize_blockwise, quantize_blockwise_t
        self._check(x)
        if transposed:
            return quantize_blockwise_t(x, block, fmt, with_dequant=CAST_DEQUANT)
        return quantize_blockwise(x, block, fmt, with_dequant=CAST_DEQUANT)

    def transpose_payload(self, p):
        """p.t().contiguous() for a 2-D row-major 1-byte payload (fast/transpose.py: torch's
        copy or the tiled kernel, QTRAIN_FAST_TRANSPOSE)."""
        from .transpose import transposed_copy
        self._check(p)
        return transposed_copy(p)

    takes_pow2_factors = True          # qtrain/ops.py scaled_mm_nt's hint

    def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype=torch.float32,
                     use_fast_accum=False, pow2_factors=False):
        from .scaled_mm import scaled_mm_nt
        self._check(a)
        return scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=use_fast_accum,
                            pow2_factors=pow2_factors)

    # ---- dequantize (F8-8, MX-8, I8-8, BW-4): judged by conformance, not on the training path
    def dequantize_float8(self, data, quant_scale, out_dtype=torch.float32):
        from .dequantize import dequantize_float8
        return dequantize_float8(data, quant_scale, out_dtype)

    def dequantize_mx(self, data, scale_bits, block_size=32, axis=-1, out_dtype=torch.float32):
        from .dequantize import dequantize_mx
        return dequantize_mx(data, scale_bits, block_size, axis, out_dtype)

    def dequantize_int8(self, data, dequant_scale, out_dtype=torch.float32):
        from .dequantize import dequantize_int8
        return dequantize_int8(data, dequant_scale, out_dtype)

    def dequantize_blockwise(self, data, quant_scale, block=(1, 128), out_dtype=torch.float32):
        from .dequantize import dequantize_blockwise
        return dequantize_blockwise(data, quant_scale, block, out_dtype)

    # ---- grouped products (MM-5, RC-13): fast/grouped_mm.py
    @property
    def grouped_casts_write_dequant(self):
        """qtrain/grouped_ops.py's hint: the grouped casts take with_dequant=True and then also
        return 1 / quant_scale, written by the kernel (QTRAIN_FAST_CAST_DEQUANT)."""
        return CAST_DEQUANT

    def padded_offsets(self, offs, align):
        """qtrain/grouped_ops.py's optional method: qtrain.grouping.padded_offsets in one
        launch (the torch ops take six)."""
        from .cast_grouped import padded_offsets_one_launch
        self._check(offs)
        return padded_offsets_one_launch(offs, align)

    def pad_groups(self, x, offs, align, pends):
        """qtrain/grouped_ops.py's optional method: qtrain.grouping.pad_groups(x, offs, align)[0]
        in one launch on the given padded ends (the torch ops take about fifteen)."""
        from .cast_grouped import pad_groups_one_launch
        self._check(x)
        return pad_groups_one_launch(x, offs, align, pends)

    def quantize_float8_grouped_t(self, x, offs, align, fmt, pow2_scale, padded_offs=None,
                                  with_dequant=False):
        from .cast_grouped import quantize_float8_grouped_t
        self._check(x)
        return quantize_float8_grouped_t(x, offs, align, fmt, pow2_scale, padded_offs,
                                         with_dequant=with_dequant)

    def quantize_float8_experts_t(self, w, fmt, pow2_scale, with_dequant=False):
        from .cast_grouped import quantize_float8_experts_t
        self._check(w)
        return quantize_float8_experts_t(w, fmt, pow2_scale, with_dequant=with_dequant)

    takes_fast_accum = True            # qtrain/grouped_ops.py scaled_grouped_mm's RC-3 hint

    def mm_mx_values_grouped(self, a, a_dequant, b, b_dequant, offs, group_align=1):
        from .grouped_mm import mx_values_grouped_product
        self._check(a)
        return mx_values_grouped_product(a, a_dequant, b, b_dequant, offs, group_align)

    def scaled_grouped_mm(self, a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1,
                          pow2_factors=False, use_fast_accum=False):
        from .grouped_mm import scaled_grouped_mm
        self._check(a)
        return scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype, group_align,
                                 pow2_factors, use_fast_accum)


class InterpretedFastBackend:
    """FastBackend on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1 set before
    qtrain.fast is imported), under a name of its own so that it can be registered beside
    "fast": the CI tests and the host-work count (benchmarks/host_overhead.py) use it."""

    def __init__(self, name="fast-interpret"):
        self._fast = FastBackend(allow_interpreter=True)
        self.name = name

    def available(self):
        return self._fast.runnable_on("cpu")

    def __getattr__(self, attr):
        return getattr(self._fast, attr)
