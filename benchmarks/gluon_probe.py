"""Whether this GPU's Triton has a working Gluon (triton.experimental.gluon: kernels with
explicit layouts), before any cast relies on it: one kernel that loads a bf16 tile in a
BlockedLayout, reduces each row's |x| bits, and takes the row maxima to a 1-D layout of its own
choosing before an atomic max, checked against torch. Prints what worked and what failed; no
Gluon kernel runs under the CPU interpreter (benchmarks/NOTES.md), so this needs a GPU.

    python3 -m benchmarks.gluon_probe"""
import sys

import torch
import triton


def main():
    print(f"triton {triton.__version__}, torch {torch.__version__}")
    try:
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
    except Exception as e:                                 # noqa: BLE001 (the finding itself)
        print(f"gluon import failed: {type(e).__name__}: {e}")
        return 1

    @gluon.jit
    def row_amax(x_ptr, out_ptr, C: gl.constexpr, BLOCK_R: gl.constexpr):
        tile: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        rows_l: gl.constexpr = gl.SliceLayout(1, tile)
        cols_l: gl.constexpr = gl.SliceLayout(0, tile)
        flat: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        rows = gl.program_id(0) * BLOCK_R + gl.arange(0, BLOCK_R, layout=rows_l)
        cols = gl.arange(0, C, layout=cols_l)
        x = gl.load(x_ptr + rows[:, None] * C + cols[None, :])
        bits = (x.to(gl.int32) << 16) & 0x7FFFFFFF
        m = gl.convert_layout(gl.max(bits, axis=1), flat)
        r = gl.program_id(0) * BLOCK_R + gl.arange(0, BLOCK_R, layout=flat)
        gl.atomic_max(out_ptr + r, m)

    x = torch.randn(256, 256, device="cuda").to(torch.bfloat16)
    out = torch.zeros(256, dtype=torch.int32, device="cuda")
    try:
        row_amax[(256 // 32,)](x.view(torch.int16), out, 256, 32, num_warps=4)
        torch.cuda.synchronize()
    except Exception as e:                                 # noqa: BLE001
        print(f"gluon kernel failed: {type(e).__name__}: {str(e)[:600]}")
        return 1
    want = (x.view(torch.int16).to(torch.int32) << 16) & 0x7FFFFFFF
    ok = torch.equal(out, want.amax(dim=1))
    print(f"gluon row amax kernel ran: {'same bits as torch' if ok else 'DIFFERENT BITS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
