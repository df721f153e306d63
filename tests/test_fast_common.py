"""Helpers for the fast-backend tests (qtrain.fast vs qtrain.reference), plus the exhaustive
check of the software float8 rounding (EXACT_SOFT_CAST, every bf16 input, every format).

On a machine without CUDA the Triton kernels run in the CPU interpreter: TRITON_INTERPRET=1 must
be set before qtrain.fast is imported, which the root conftest.py does. Shapes stay tiny (the
interpreter is slow); benchmarks/gpu_fast_check.py runs the real shapes on a GPU.
"""
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from qtrain import reference
from qtrain.fast.backend import FastBackend
from qtrain.fast.common import float8_params
from qtrain.fast.encode import encode_float8
from qtrain.formats import FLOAT8_FORMATS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FORMATS = sorted(FLOAT8_FORMATS)
_NP_OF_TORCH = {torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2,
                torch.float8_e4m3fnuz: ml_dtypes.float8_e4m3fnuz,
                torch.float8_e5m2fnuz: ml_dtypes.float8_e5m2fnuz, torch.bfloat16: ml_dtypes.bfloat16}


def fast_backend():
    """The backend under test, or a skip naming why it cannot run here."""
    backend = FastBackend(allow_interpreter=True)
    ok, reason = backend.runnable_on(torch.device(DEVICE))
    if not ok:
        pytest.skip(reason)
    return backend


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A torch tensor as a NumPy array with the matching ml_dtypes dtype (bits unchanged)."""
    t = t.detach().cpu()
    if t.dtype in _NP_OF_TORCH:
        width = torch.uint8 if t.element_size() == 1 else torch.int16
        return t.contiguous().view(width).numpy().view(_NP_OF_TORCH[t.dtype])
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """fp32 or ml_dtypes bf16 NumPy array -> torch tensor on DEVICE."""
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)


def assert_same(actual, expected, what, seed=None):
    """Bitwise equality, NaN payloads free (FMT-2): reports mismatch count and the first bad
    element as value and hex bits (STYLE: tests)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.itemsize]
    a_bits, e_bits = actual.view(uint).reshape(-1), expected.view(uint).reshape(-1)
    differ = a_bits != e_bits
    if actual.dtype.kind == "V" or actual.dtype.kind == "f":
        both_nan = (np.isnan(actual.astype(np.float64)) & np.isnan(expected.astype(np.float64)))
        differ &= ~both_nan.reshape(-1)
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {differ.size} differ (seed {seed}); first at "
            f"{np.unravel_index(i, actual.shape)}: got {actual.reshape(-1)[i]!r} "
            f"(0x{int(a_bits[i]):0{2 * actual.itemsize}x}), expected {expected.reshape(-1)[i]!r} "
            f"(0x{int(e_bits[i]):0{2 * actual.itemsize}x})")


def edge_rows(shape, dtype, seed, edge=True):
    """Random data of `shape` (2-D, last axis >= 8) with varied row magnitudes; with edge=True
    some rows carry NaN, Inf, all zeros (with -0), subnormals and saturating values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x *= np.float32(2.0) ** rng.integers(-20, 20, size=(shape[0], 1)).astype(np.float32)
    if edge and shape[0] >= 6:
        x[1] = 0.0
        x[1, ::2] = -0.0
        x[2, 3] = np.nan
        x[3, 1] = -np.inf
        x[4] = x[4] * np.float32(2.0 ** -140)          # fp32 subnormals (bf16 keeps some)
        x[5, 0] = np.float32(3.0e38)                    # quant_scale near its lower end
    return x.astype(dtype)


@pytest.fixture
def seed(request):
    """Fresh seed each run, shown in failure messages."""
    return int(np.random.SeedSequence().entropy % (2 ** 31))


@triton.jit
def _encode_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, MAX: tl.constexpr,
                   MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                   TL_DTYPE: tl.constexpr, SOFT: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n).to(tl.float32)
    tl.store(out_ptr + offs, encode_float8(x, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, SOFT), mask=offs < n)


@pytest.mark.parametrize("fmt", FORMATS)
def test_soft_cast_every_bf16_FMT_2(fmt):
    """EXACT_SOFT_CAST: every one of the 65536 bf16 inputs rounds exactly as the reference
    (clamp then rne, subnormals, signed zeros, NaN). On a GPU this also checks the hardware path."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 on a CPU-only machine")
    bits = np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    x = from_numpy(bits)
    expected = reference.cast_to_float8(bits.astype(np.float32), fmt)
    soft_options = (True,) if DEVICE == "cpu" else (True, False)
    for soft in soft_options:
        if not soft and fmt not in ("float8_e4m3fn", "float8_e5m2"):
            continue
        out = torch.empty(1 << 16, dtype=torch.uint8, device=DEVICE)
        _encode_kernel[(16,)](x, out, 1 << 16, BLOCK=4096, **float8_params(fmt), SOFT=soft)
        got = out.cpu().numpy().view(expected.dtype)
        assert_same(got, expected, f"{fmt} soft={soft}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_soft_cast_fp32_ties_and_random_FMT_4(fmt, seed):
    """fp32 inputs that bf16 cannot hold: exact ties and their neighbours, random bits."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 on a CPU-only machine")
    rng = np.random.default_rng(seed)
    codes = np.arange(256, dtype=np.uint8).view(reference.float8_dtype(fmt)).astype(np.float32)
    codes = np.sort(codes[np.isfinite(codes)])
    mids = ((codes[1:].astype(np.float64) + codes[:-1]) / 2).astype(np.float32)  # exact ties
    near = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    rand = rng.integers(0, 2 ** 32, size=4096, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x32 = np.concatenate([near, rand]).astype(np.float32)
    expected = reference.cast_to_float8(x32, fmt)
    out = torch.empty(x32.size, dtype=torch.uint8, device=DEVICE)
    _encode_kernel[(triton.cdiv(x32.size, 4096),)](from_numpy(x32), out, x32.size, BLOCK=4096,
                                                    **float8_params(fmt), SOFT=True)
    assert_same(out.cpu().numpy().view(expected.dtype), expected, fmt, seed)
