"""What the installed Triton makes of our kernels, checked by compiling them for sm_90 on any
machine (no GPU needed: Triton lowers to TTGIR and PTX on the CPU).

The one-pass both-layouts float8 cast (fast/cast_float8.py ROW_COPY) writes the same 8-bit codes
to x and x.T. Where Triton stores those codes once directly and once through a layout conversion,
the converted store came out corrupted on the H200 (fp32 x on Triton 3.6; the pattern of
triton-lang/triton#11111). So cast_float8.row_copy_verified must say False for any dtype and
Triton version whose compiled kernel has that pattern.

The per-group column cast of token groups (fast/grouped_mm.py) must store x.T in 16-byte
vectors: counted from a group start the compiler cannot see, Triton 3.6 stored it byte by byte.

"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

# Triton and qtrain.fast are imported by the child process only: imported here they would
# decorate kernels for the GPU in this pytest process, before tests/test_fast_common.py sets
# TRITON_INTERPRET for the interpreter tests that run later in it.

_SIGNATURE = {"R": "i32", "C": "i32", "amax_ptr": "*i32", "qs_ptr": "*fp32", "dq_ptr": "*fp32",
              "data_ptr": "*u8", "row_amax_ptr": "*i32", "row_qs_ptr": "*fp32",
              "row_dq_ptr": "*fp32", "row_data_ptr": "*u8"}


def _compile_sm90(kernel, signature, consts, aligned, ir, warps=4, gluon=False):
    """The `ir` ("ttgir", "ptx") of `kernel` specialized with `consts` and 16-divisible
    `aligned` arguments, compiled for sm_90 by the installed Triton
    (benchmarks.sass_counts.compile_sm90): (text, None), or (None, the reason) where this
    Triton cannot compile for sm_90 here."""
    import triton
    from triton.compiler.errors import CompilationError
    from benchmarks.sass_counts import compile_sm90
    try:
        return compile_sm90(kernel, signature, consts, warps, gluon, aligned).asm[ir], None
    except CompilationError:    # the kernel's own source does not compile: a failure, not a skip
        raise
    except Exception as e:      # noqa: BLE001 (no CUDA backend or ptxas here: say so, skip)
        return None, (f"Triton {triton.__version__} cannot compile for sm_90 here: "
                      f"{type(e).__name__}: {str(e)[:200]}")


def _row_copy_ttgir(dtype):
    """TTGIR of the ROW_COPY cast for x of `dtype` at its shipped settings (tile, T_FROM_X), or
    the reason it cannot compile."""
    from qtrain.fast import cast_float8
    from qtrain.fast.common import float8_params
    (block_r, block_c), _ = cast_float8._tile_setting(True, False, True)
    consts = dict(BLOCK_R=block_r, BLOCK_C=block_c, TENSORWISE=True, TRANSPOSED=True, DUAL=False,
                  ROW_COPY=True, WITH_DQ=True, POW2=False, TMA=False,
                  T_FROM_X=cast_float8.T_FROM_X, EXACT_SOFT_CAST=False,
                  IS_BF16=dtype == torch.bfloat16, **float8_params("float8_e4m3fn"))
    signature = {"x_ptr": "*bf16" if dtype == torch.bfloat16 else "*fp32", **_SIGNATURE}
    return _compile_sm90(cast_float8._float8_tiles_kernel, signature, consts, (), "ttgir")


def _token_group_cast_ptx(use, stages=None):
    """PTX of the token-group column cast with GROUP_CAST[use]'s tile (token groups take
    either, fast/cast_grouped._group_cast_setting), `stages` (GROUP_CAST_STAGES) and the shipped
    GROUP_CAST_T_FROM_X, or the reason."""
    from qtrain.fast import cast_grouped
    from qtrain.fast.common import float8_params
    kernel = cast_grouped._float8_group_cols_t_kernel
    block_r, block_c, amax_block_r, _, _ = cast_grouped.GROUP_CAST[use]
    consts = dict(FROM_OFFS=True, ALIGN=16, BLOCK_R=block_r, AMAX_BLOCK_R=amax_block_r,
                  BLOCK_C=block_c, STAGES=stages, T_FROM_X=cast_grouped.GROUP_CAST_T_FROM_X,
                  WITH_DQ=True, POW2=True,
                  EXACT_SOFT_CAST=False, IS_BF16=True,
                  **float8_params("float8_e4m3fn"))
    consts = {n: v for n, v in consts.items() if n in kernel.arg_names}   # a kernel without a hint
    signature = {"x_ptr": "*bf16", "offs_ptr": "*i32", "pends_ptr": "*i32", "data_t_ptr": "*u8",
                 "qs_ptr": "*fp32", "dq_ptr": "*fp32", "C": "i32", "N_GROUPS": "i32",
                 "N_COL_TILES": "i32", "GROUP_ROWS": "i32", "G_STRIDE": "i32", "C_STRIDE": "i32"}
    # what a launch on the MoE shape specializes: pointers, C, G_STRIDE (0), Mp all % 16 == 0
    aligned = ("x_ptr", "offs_ptr", "pends_ptr", "data_t_ptr", "qs_ptr", "dq_ptr", "C",
               "G_STRIDE", "C_STRIDE")
    return _compile_sm90(kernel, signature, consts, aligned, "ptx")


def _stores_codes_through_a_conversion(ttgir):
    """True when an 8-bit tensor is stored as is and also converted to another layout and
    stored: the pattern of triton-lang/triton#11111."""
    stored = set(re.findall(r"tt\.store %\w+, (%[\w.]+)", ttgir))
    converted = {m.group(1): m.group(2) for m in re.finditer(
        r"(%[\w.]+) = ttg\.convert_layout (%[\w.]+) : tensor<[0-9x]+xi8", ttgir)}
    return any(dst in stored and src in stored for dst, src in converted.items())


def _compiled_patterns():
    """{dtype name: True/False (pattern found) or the reason it could not compile,
    "row_copy_verified": {dtype name: the guard's answer for this Triton}, "triton": its version,
    "token_group_stores": {store op: count} or the reason}, from a child process without
    TRITON_INTERPRET (this process may hold interpreted kernels)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode:
        raise AssertionError(f"compile child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled_patterns():
    return _compiled_patterns()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_row_copy_guard_matches_the_compiled_kernel(dtype, compiled_patterns):
    found = compiled_patterns[str(dtype)]
    if isinstance(found, str):
        pytest.skip(found)
    if found:
        assert not compiled_patterns["row_copy_verified"][str(dtype)], (
            f"Triton {compiled_patterns['triton']} stores the {dtype} one-pass cast's 8-bit codes directly "
            f"and through a layout conversion (triton-lang/triton#11111), but row_copy_verified "
            f"allows it on CUDA")


@pytest.mark.parametrize("use", ["tokens", "experts"])
def test_token_group_cast_stores_vectors(use, compiled_patterns):
    ptx_stores = compiled_patterns["token_group_stores"][use]
    if isinstance(ptx_stores, str):
        pytest.skip(ptx_stores)
    assert ptx_stores.get("st.global.v4.b32", 0) >= 1 and not ptx_stores.get("st.global.b8"), (
        f"token-group cast ({use} tile) global stores on Triton {compiled_patterns['triton']}: "
        f"{ptx_stores} "
        f"(x.T byte by byte: the output offset lost its alignment)")


def test_group_cast_stages_pipeline_the_loads(compiled_patterns):
    """GROUP_CAST_STAGES is a real knob: with stages the row loops' loads become asynchronous
    copies (cp.async, issued ahead of their use), without them plain loads."""
    counts = compiled_patterns["token_group_cp_async"]
    if isinstance(counts, str):
        pytest.skip(counts)
    assert counts["None"] == 0 and counts["3"] > 0, (
        f"cp.async in the token-group cast's PTX by GROUP_CAST_STAGES on Triton "
        f"{compiled_patterns['triton']}: {counts}")


def test_pattern_finder_on_known_ttgir():
    """The finder flags the same codes stored directly and converted, and only that."""
    both = ("%c = tt.fp_to_fp %y\n%5 = ttg.convert_layout %c : tensor<32x128xi8, #b> -> "
            "tensor<32x128xi8, #b1>\ntt.store %4, %5, %m\ntt.store %7, %c, %m2\n")
    twice_encoded = ("%5 = ttg.convert_layout %x : tensor<32x128xbf16, #b1> -> "
                     "tensor<32x128xbf16, #b>\ntt.store %4, %c1, %m\ntt.store %6, %c2, %m\n")
    two_tensors = ("%5 = ttg.convert_layout %a : tensor<32x128xi8, #b> -> tensor<32x128xi8, #b1>\n"
                   "tt.store %4, %5, %m\ntt.store %7, %b, %m2\n")
    assert _stores_codes_through_a_conversion(both)
    assert not _stores_codes_through_a_conversion(twice_encoded)
    assert not _stores_codes_through_a_conversion(two_tensors)


if __name__ == "__main__":     # the child of _compiled_patterns
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks
    import triton
    from qtrain.fast.cast_float8 import row_copy_verified
    result = {"triton": triton.__version__, "row_copy_verified": {}}
    for dt in (torch.bfloat16, torch.float32):
        ttgir, why = _row_copy_ttgir(dt)
        result[str(dt)] = why if ttgir is None else _stores_codes_through_a_conversion(ttgir)
        result["row_copy_verified"][str(dt)] = row_copy_verified(dt, triton.__version__)
    result["token_group_stores"] = {}
    for use in ("tokens", "experts"):
        ptx, why = _token_group_cast_ptx(use)
        result["token_group_stores"][use] = why if ptx is None else {
            op: len(re.findall(re.escape(op) + r"\b", ptx))
            for op in ("st.global.v4.b32", "st.global.b8")}
    result["token_group_cp_async"] = {}
    for stages in (None, 3):
        ptx, why = _token_group_cast_ptx("experts", stages)
        if ptx is None:
            result["token_group_cp_async"] = why
            break
        result["token_group_cp_async"][str(stages)] = len(re.findall(r"cp\.async\.", ptx))
    print(json.dumps(result))
