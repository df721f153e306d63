"""One-off probe of what torch/Triton on the GPU machine can do (scaled_mm variants, fp8 cvt behaviour).

Run: python benchmarks/gpu_probe.py   (prints facts the fast backend's design depends on)
"""
import inspect
import sys
import traceback

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
try:
    import triton
    import triton.language as tl
    print("triton", triton.__version__)
except Exception as e:  # pragma: no cover
    print("no triton", e)
    sys.exit(0)

dev = "cuda"
torch.manual_seed(0)


def attempt(label, fn):
    try:
        out = fn()
        print(f"OK   {label}: {out}")
    except Exception as e:
        msg = str(e).splitlines()[0][:200]
        print(f"FAIL {label}: {type(e).__name__}: {msg}")


M, K, N = 256, 512, 384
a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
b = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn)
one = torch.ones((), device=dev)
sa_row = torch.rand(M, 1, device=dev) + 0.5
sb_row = torch.rand(1, N, device=dev) + 0.5
ref = (a.float() @ b.float().t())
for od in (torch.bfloat16, torch.float32):
    attempt(f"_scaled_mm tensorwise out={od}", lambda: (torch._scaled_mm(a, b.t(), one, one, out_dtype=od).float() - ref).abs().max().item())
    attempt(f"_scaled_mm rowwise out={od}", lambda: (torch._scaled_mm(a, b.t(), sa_row, sb_row, out_dtype=od).float() - ref * sa_row * sb_row).abs().max().item())
    attempt(f"_scaled_mm rowwise out={od} fast_accum", lambda: (torch._scaled_mm(a, b.t(), sa_row, sb_row, out_dtype=od, use_fast_accum=True).float() - ref * sa_row * sb_row).abs().max().item())
b5 = torch.randn(N, K, device=dev).to(torch.float8_e5m2)
attempt("_scaled_mm e4m3 x e5m2", lambda: torch._scaled_mm(a, b5.t(), one, one, out_dtype=torch.bfloat16).shape)
attempt("_scaled_mm e5m2 x e4m3", lambda: torch._scaled_mm(b5, a.t(), one, one, out_dtype=torch.bfloat16).shape)
# blockwise
sa_blk = torch.rand(M, K // 128, device=dev) + 0.5
sb_blk = torch.rand(N // 128, K // 128, device=dev) + 0.5
attempt("_scaled_mm 1x128 x 128x128", lambda: torch._scaled_mm(a, b.t(), sa_blk.t().contiguous().t(), sb_blk.t().contiguous(), out_dtype=torch.bfloat16).shape)
try:
    import torch.nn.functional as F
    print("F.scaled_mm:", hasattr(F, "scaled_mm"))
    if hasattr(F, "scaled_mm"):
        print(inspect.signature(F.scaled_mm))
        from torch.nn.functional import ScalingType, SwizzleType
        print("ScalingType", list(ScalingType.__members__), "SwizzleType", list(SwizzleType.__members__))
        bw_ref = (a.float() * sa_blk.repeat_interleave(128, 1)) @ (b.float() * sb_blk.repeat_interleave(128, 0).repeat_interleave(128, 1)).t()
        def run_bw():
            o = F.scaled_mm(a, b.t(), sa_blk.t().contiguous().t(), ScalingType.BlockWise1x128,
                            sb_blk.t().contiguous().t(), ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)
            return ((o.float() - bw_ref).norm() / bw_ref.norm()).item()
        attempt("F.scaled_mm blockwise (scales outer-dim-major)", run_bw)
        def run_bw2():
            o = F.scaled_mm(a, b.t(), sa_blk, ScalingType.BlockWise1x128, sb_blk, ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)
            return ((o.float() - bw_ref).norm() / bw_ref.norm()).item()
        attempt("F.scaled_mm blockwise (row-major scales)", run_bw2)
except Exception:
    traceback.print_exc()
# grouped
E = 4
offs = torch.tensor([64, 64, 160, 256], device=dev, dtype=torch.int32)
bg = torch.randn(E, N, K, device=dev).to(torch.float8_e4m3fn)
sbg = torch.rand(E, N, device=dev) + 0.5
sag = torch.rand(M, device=dev) + 0.5
attempt("_scaled_grouped_mm 2d-3d rowwise", lambda: torch._scaled_grouped_mm(a, bg.transpose(-2, -1), sag, sbg, offs=offs, out_dtype=torch.bfloat16).shape)
print("_scaled_grouped_mm sig:", getattr(torch._scaled_grouped_mm, "__doc__", None) and str(torch._scaled_grouped_mm.__doc__)[:200])
A8 = torch.randint(-127, 128, (M, K), device=dev, dtype=torch.int8)
B8 = torch.randint(-127, 128, (K, N), device=dev, dtype=torch.int8)
attempt("_int_mm", lambda: (torch._int_mm(A8, B8).double() - A8.double() @ B8.double()).abs().max().item())


@triton.jit
def cvt_kernel(x_ptr, y_ptr, n, KIND: tl.constexpr):
    offs = tl.arange(0, 64)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    if KIND == 0:
        y = x.to(tl.float8e4nv)
    elif KIND == 1:
        y = x.to(tl.float8e5)
    elif KIND == 2:
        y = x.to(tl.float8e4b8)
    else:
        y = x.to(tl.float8e5b16)
    tl.store(y_ptr + offs, y.to(tl.uint8, bitcast=True), mask=m)


vals = torch.tensor([31.9, 500.0, 448.0, 464.0, 480.0, float("inf"), float("-inf"), float("nan"), -0.0,
                     2.0**-10, 2.0**-9 * 1.5, 2.0**-7 + 2.0**-11, 1e-30, 57344.0, 61440.0, 70000.0, 240.0, 250.0,
                     0.1, 1.0 + 2.0**-4, 1.0 + 3 * 2.0**-4], device=dev)
for kind, (tname, tdt) in enumerate([("e4m3fn", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2),
                                     ("e4m3fnuz", torch.float8_e4m3fnuz), ("e5m2fnuz", torch.float8_e5m2fnuz)]):
    y = torch.empty(vals.numel(), dtype=torch.uint8, device=dev)
    try:
        cvt_kernel[(1,)](vals, y, vals.numel(), KIND=kind)
        tref = vals.to(tdt).view(torch.uint8)
        print(f"triton cvt {tname}:", [hex(v) for v in y.tolist()])
        print(f"torch  cvt {tname}:", [hex(v) for v in tref.tolist()])
    except Exception as e:
        print(f"FAIL triton cvt {tname}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

# ceilings
x = torch.empty(2 * 1024**3 // 4, device=dev)
yb = torch.empty_like(x)
ms = triton.testing.do_bench(lambda: yb.copy_(x), return_mode="median")
print(f"copy bandwidth: {2 * x.numel() * 4 / ms / 1e6:.0f} GB/s")
S = 8192
A = torch.randn(S, S, device=dev, dtype=torch.bfloat16)
B = torch.randn(S, S, device=dev, dtype=torch.bfloat16)
ms = triton.testing.do_bench(lambda: A @ B, return_mode="median")
print(f"bf16 mm {S}^3: {2 * S**3 / ms / 1e9:.0f} TFLOP/s")
A8 = A.to(torch.float8_e4m3fn); B8 = B.to(torch.float8_e4m3fn)
ms = triton.testing.do_bench(lambda: torch._scaled_mm(A8, B8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=True), return_mode="median")
print(f"fp8 tensorwise fast-accum {S}^3: {2 * S**3 / ms / 1e9:.0f} TFLOP/s")
ms = triton.testing.do_bench(lambda: torch._scaled_mm(A8, B8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=False), return_mode="median")
print(f"fp8 tensorwise no-fast-accum {S}^3: {2 * S**3 / ms / 1e9:.0f} TFLOP/s")
ra = torch.rand(S, 1, device=dev); rb = torch.rand(1, S, device=dev)
ms = triton.testing.do_bench(lambda: torch._scaled_mm(A8, B8.t(), ra, rb, out_dtype=torch.bfloat16, use_fast_accum=True), return_mode="median")
print(f"fp8 rowwise fast-accum {S}^3: {2 * S**3 / ms / 1e9:.0f} TFLOP/s")
ms = triton.testing.do_bench(lambda: torch._scaled_mm(A8, B8.t(), ra, rb, out_dtype=torch.bfloat16, use_fast_accum=False), return_mode="median")
print(f"fp8 rowwise no-fast-accum {S}^3: {2 * S**3 / ms / 1e9:.0f} TFLOP/s")
