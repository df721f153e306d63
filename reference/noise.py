"""The stochastic-rounding noise generator (spec/04-int8.md, I8-10): a counter-based hash of
(seed, call index, element index), so that any backend draws the same noise without state.

Written for clarity, not speed: uint32 NumPy arithmetic, which wraps modulo 2^32 as the rule
says.
"""
import numpy as np

# I8-10: the 32-bit mixing function's constants (a xor-shift-multiply hash)
MIX_MUL1 = np.uint32(0x21F0AAAD)
MIX_MUL2 = np.uint32(0x735A2D97)


def mix32(x):
    """I8-10 mix: x ^= x >> 16; x *= MIX_MUL1; x ^= x >> 15; x *= MIX_MUL2; x ^= x >> 15
    (uint32, products modulo 2^32)."""
    x = np.asarray(x, dtype=np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= MIX_MUL1
    x ^= x >> np.uint32(15)
    x *= MIX_MUL2
    x ^= x >> np.uint32(15)
    return x


def noise_key(seed, call):
    """I8-10: key = mix32(mix32(call mod 2^32) ^ (seed mod 2^32))."""
    return mix32(mix32(np.uint32(int(call) % 2 ** 32)) ^ np.uint32(int(seed) % 2 ** 32))


def uniform_noise(shape, seed, call):
    """I8-10: float32 noise of `shape` in [0, 1): element i (row-major flat index) is
    (mix32(i + key) >> 8) * 2^-24, i and the sum taken modulo 2^32."""
    n = int(np.prod(shape, dtype=np.int64))
    i = (np.arange(n, dtype=np.uint64) % np.uint64(2 ** 32)).astype(np.uint32)
    h = mix32(i + noise_key(seed, call))                  # uint32 add wraps modulo 2^32
    return ((h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)
