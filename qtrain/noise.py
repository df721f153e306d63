"""The stochastic-rounding noise generator (spec/04-int8.md, I8-10) in torch ops, on the device
of the call index: no host sync, so steps with stochastic rounding can be captured in CUDA
graphs and compiled whole. The default for backends without their own `uniform_noise`; the
reference (NumPy) and fast (Triton) backends give the same bits.

torch has no wrapping uint32 multiply, so values live in int64 below 2^32 and a product modulo
2^32 is taken in two 16-bit halves (each partial product < 2^48: no int64 overflow).
"""
import torch

MIX_MUL1 = 0x21F0AAAD
MIX_MUL2 = 0x735A2D97
_LOW32 = 0xFFFFFFFF


def _mul32(x, c):
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and a constant c < 2^32."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _LOW32


def mix32(x):
    """I8-10 mix on int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL2)
    return x ^ (x >> 15)


def uniform_noise(shape, seed: int, call: torch.Tensor) -> torch.Tensor:
    """I8-10: float32 noise of `shape` in [0, 1) on call's device; call is the int64 call index
    (a 0-d tensor, read on the device)."""
    key = mix32(mix32(call.to(torch.int64) & _LOW32) ^ (int(seed) % 2 ** 32))
    n = 1
    for d in shape:
        n *= int(d)
    i = torch.arange(n, dtype=torch.int64, device=call.device) & _LOW32
    h = mix32((i + key) & _LOW32)
    return ((h >> 8).to(torch.float32) * 2.0 ** -24).reshape(shape)
