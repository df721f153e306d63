"""Shared launch-side helpers of qtrain.fast: format records as Triton/torch dtypes, input checks."""
import functools
import logging
import struct

import torch
import triton.language as tl

from qtrain.formats import FLOAT8_FORMATS, float8_format

# torch dtype and Triton element type of each float8 format (FMT-1; names never aliased).
TORCH_FLOAT8 = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
}
TRITON_FLOAT8 = {
    "float8_e4m3fn": tl.float8e4nv,
    "float8_e5m2": tl.float8e5,
    "float8_e4m3fnuz": tl.float8e4b8,
    "float8_e5m2fnuz": tl.float8e5b16,
}
# Formats whose fp32 -> fp8 conversion NVIDIA GPUs (sm89+) do in hardware. The fnuz formats are
# AMD-only in Triton's NVIDIA backend, so on CUDA they always take the exact software rounding.
CUDA_HARDWARE_FLOAT8 = ("float8_e4m3fn", "float8_e5m2")

INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)   # FMT-5


def fp32(value: float) -> float:
    """The Python float holding fp32(value) (rne); exact in any fp32 kernel constant."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (decided at import time)."""
    return type(kernel).__name__ == "InterpretedFunction"


def use_soft_cast(kernel, fmt: str, device: torch.device) -> bool:
    """EXACT_SOFT_CAST: software rne under the interpreter (its fp8 downcast is wrong) or where
    the GPU has no conversion instruction for `fmt`; the hardware conversion everywhere else."""
    if is_interpreted(kernel):
        return True
    return device.type == "cuda" and fmt not in CUDA_HARDWARE_FLOAT8


_NO_TMA_LOGGED = set()


def tma_store_ok(device: torch.device, *row_bytes: int) -> bool:
    """Whether a kernel may store through TMA tensor descriptors: the device has TMA (an
    NVIDIA GPU of compute capability 9.0 and later; the interpreter emulates it on the CPU)
    and every payload row stride (in bytes) is a multiple of 16, a descriptor's rule. A GPU
    without TMA (older NVIDIA, and every ROCm GPU: MI300X reports capability 9.4 but has no
    TMA) gets one log line and the element-wise store (the same bits)."""
    if any(n % 16 for n in row_bytes):
        return False
    if device.type != "cuda":
        return True
    if torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9:
        return True
    if device not in _NO_TMA_LOGGED:
        _NO_TMA_LOGGED.add(device)
        logging.getLogger("qtrain").info(
            "qtrain.fast: %s has no TMA (%s): the casts that write x.T store element-wise",
            device, "ROCm" if torch.version.hip else "compute capability < 9.0")
    return False


def float8_params(fmt: str) -> dict:
    """Constexpr kernel arguments describing one float8 format (FMT-1)."""
    f = float8_format(fmt)
    return dict(MAX=f.max, MBITS=f.mbits, BIAS=f.bias, FNUZ=not f.has_negative_zero,
                TL_DTYPE=TRITON_FLOAT8[fmt])


def check_device(kernel, x: torch.Tensor, layer: str) -> None:
    """Triton kernels need a CUDA tensor, or a CPU tensor when the interpreter is on."""
    if x.device.type == "cuda" or (x.device.type == "cpu" and is_interpreted(kernel)):
        return
    raise RuntimeError(
        f"{layer}: tensor on {x.device} cannot run the Triton kernel; use a CUDA tensor, or set "
        f"TRITON_INTERPRET=1 before importing qtrain.fast to run it on the CPU, or use the "
        f"reference backend (QTRAIN_BACKEND=reference)")


def check_input(x: torch.Tensor, layer: str, dtypes=INPUT_DTYPES) -> None:
    """Reject what the kernels would read wrongly: other dtypes, strided views, empty tensors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{layer}: dtype {x.dtype} not supported, shape {tuple(x.shape)}; "
                        f"expected one of {[str(d) for d in dtypes]}")
    if not x.is_contiguous():
        raise ValueError(f"{layer}: input of shape {tuple(x.shape)} and strides {x.stride()} is "
                         f"not contiguous; pass x.contiguous() (the kernels index row-major)")
    if x.numel() == 0:
        raise ValueError(f"{layer}: empty input of shape {tuple(x.shape)}")


def kernel_input(x: torch.Tensor):
    """(tensor to pass, IS_BF16): bf16 goes in as its int16 bits (see encode.widen_to_fp32)."""
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16), True
    return x, False


def check_format(fmt: str, layer: str, allowed=tuple(FLOAT8_FORMATS)) -> None:
    if fmt not in allowed:
        raise ValueError(f"{layer}: format {fmt!r} not supported here; expected one of "
                         f"{list(allowed)}")


def normalize_axis(axis: int, ndim: int, layer: str, shape) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{layer}: axis {axis} out of range for shape {tuple(shape)}")
    return axis % ndim


@functools.lru_cache(maxsize=None)
def device_capability(device: torch.device):
    """(major, minor) of a CUDA device, asked once per device (host time on every call)."""
    return torch.cuda.get_device_capability(device)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids (plain Python: triton.cdiv costs microseconds per call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1), as triton.next_power_of_2 without its call cost."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def pow2_at_most(n: int, cap: int) -> int:
    """Largest tile width: next power of two of n, at most cap (tile dims must be powers of 2)."""
    return min(next_pow2(max(int(n), 1)), cap)


ROW_IN_REGISTERS = 16384    # rowwise casts hold rows up to this length in registers (one read)


@functools.lru_cache(maxsize=4096)
def rowwise_tile(R: int, K: int, kernel) -> tuple:
    """(BLOCK_R, BLOCK_K, num_warps) of the rowwise cast kernels. Rows up to ROW_IN_REGISTERS
    long are held whole (BLOCK_K >= K: one read of x); longer rows loop over K twice. About
    8192 elements per program (16384 for one long row), 32 per thread. The interpreter gets
    small tiles (its cost grows with the tile, not the program count)."""
    if is_interpreted(kernel):       # rows past 128 take the two-loop path (tested too)
        block_k = pow2_at_most(K, 128)
        return max(1, min(512 // block_k, next_pow2(R))), block_k, 4
    block_k = next_pow2(K)
    if block_k > ROW_IN_REGISTERS:
        block_k = 4096
    block_r = max(1, min(8192 // block_k, next_pow2(R)))
    warps = max(4, min(16, block_r * block_k // 1024))
    return block_r, block_k, warps


@functools.lru_cache(maxsize=4096)
def cast_tile(R: int, C: int, transposed: bool) -> tuple:
    """(BLOCK_R, BLOCK_C, num_warps) of the tile cast kernels (column scales, dual, transposed):
    a transposed tile is stored through tl.trans, so both the 64 bf16 columns read (128 B per
    row) and the 128 rows written (128 B per row of x.T) are full lines."""
    if transposed:
        return pow2_at_most(R, 128), pow2_at_most(C, 64), 8
    return pow2_at_most(R, 32), pow2_at_most(C, 256), 8


def flat_2d(x: torch.Tensor) -> torch.Tensor:
    """x as a 2-D row-major view for tensorwise passes (layout-free): rows of 1024 when that
    divides x.numel(), else x's last axis."""
    n = x.numel()
    if n % 1024 == 0:
        return x.reshape(n // 1024, 1024)
    return x.reshape(1, -1) if x.dim() < 2 else x.reshape(-1, x.shape[-1])
