"""The stochastic-rounding noise generator (spec/04-int8.md, I8-10) as one Triton pass: each
program hashes BLOCK element indices with the key of (seed, call index), the call index read
from device memory (no host sync). Bit-identical to qtrain.reference.noise.uniform_noise.
"""
import torch
import triton
import triton.language as tl

from .common import cdiv, check_device

LAYER = "qtrain.fast.noise"
BLOCK = 1024


@triton.jit
def mix32(x):
    """I8-10 mix on uint32 (products wrap modulo 2^32)."""
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def counter_uniform(call_ptr, seed_lo, offs):
    """I8-10 noise of the elements at flat indices offs (int64): (mix32(i + key) >> 8) * 2^-24
    with key = mix32(mix32(call) ^ seed), all uint32; the int64 call index read at call_ptr."""
    call = (tl.load(call_ptr) & 0xFFFFFFFF).to(tl.uint32)
    # tl.cast, not .to: Triton passes an int argument equal to 1 as a constexpr
    key = mix32(mix32(call) ^ tl.cast(seed_lo, tl.uint32))
    h = mix32((offs & 0xFFFFFFFF).to(tl.uint32) + key)
    return (h >> 8).to(tl.float32) * (2.0 ** -24)


@triton.jit
def _uniform_noise_kernel(out_ptr, n, seed_lo, call_ptr, BLOCK: tl.constexpr):
    """out[i] = counter_uniform(i) for BLOCK elements per program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, counter_uniform(call_ptr, seed_lo, offs), mask=offs < n)


def call_index(call, device, layer):
    """The call index as the int64 0-d tensor the kernels read, checked: one element on
    `device` (it is read there, never on the host)."""
    if call.device != device or call.numel() != 1:
        raise ValueError(f"{layer}: call index must be one element on {device}, got shape "
                         f"{tuple(call.shape)} on {call.device}")
    return call.reshape(()).to(torch.int64)


def uniform_noise(like, seed, call):
    """I8-10 noise shaped like `like` (float32, on like's device); call: int64 0-d tensor on the
    same device."""
    check_device(_uniform_noise_kernel, like, LAYER)
    call = call_index(call, like.device, LAYER)
    out = torch.empty(like.shape, dtype=torch.float32, device=like.device)
    n = out.numel()
    if n:
        _uniform_noise_kernel[(cdiv(n, BLOCK),)](out, n, int(seed) % 2 ** 32, call, BLOCK=BLOCK)
    return out
