"""P-F8AG, element by element and without processes: casting each shard with the quant_scale of
the MAX-reduced shard amaxes gives the bits of quantizing the full tensor tensorwise
(F8-1, F8-2, F8-4, F8-5, F8-6), checked against the reference backend."""
import pytest
import torch

from distributed_tests import parity


def _cases(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(64, 32, generator=g) * torch.logspace(-8, 3, 32)   # wide exponent range
    zero = torch.zeros(64, 32)
    zero[5, 3] = -0.0
    tiny = torch.randn(64, 32, generator=g) * 2.0 ** -140                  # fp32 subnormals
    nan = base.clone()
    nan[40, 7] = float("nan")                                              # F8-5
    inf = base.clone()
    inf[3, 1] = float("-inf")
    return {"randn": base, "zero": zero, "subnormal": tiny, "nan": nan, "inf": inf}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_shard_cast_equals_full_tensorwise_F8_1_F8_2_F8_4(world, dtype, fmt):
    from qtrain.fsdp import cast_with_quant_scale, local_amax, quant_scale_from_amax
    from qtrain.reference_backend import ReferenceBackend
    ref = ReferenceBackend()
    seed = 1234 + world
    for name, x in _cases(seed).items():
        x = x.to(dtype)
        shards = x.chunk(world)
        amax = torch.stack([local_amax(s) for s in shards]).amax()   # = all-reduce MAX
        qs = quant_scale_from_amax(amax, fmt)
        got = torch.cat([cast_with_quant_scale(s, qs, fmt) for s in shards])
        want_data, want_qs = ref.quantize_float8(x, fmt, None, False)
        tag = f"{name} world={world} {dtype} {fmt} seed={seed}"
        if name in ("nan", "inf"):   # F8-5: NaN scale, every element NaN (payload free)
            assert torch.isnan(qs) and torch.isnan(want_qs), tag
            assert torch.isnan(got.float()).all() and torch.isnan(want_data.float()).all(), tag
            continue
        parity.assert_bitwise(f"quant_scale {tag}", qs, want_qs)
        parity.assert_bitwise(f"payload {tag}", got, want_data)
