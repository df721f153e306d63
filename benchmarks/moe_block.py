"""A whole MoE block, fwd+bwd, on a GPU (issues 6 and 8): what a user converting an MoE model
sees, rather than one grouped product. Router (a bf16 nn.Linear, never quantized), top-2 of 8
experts, SwiGLU experts as three grouped products (w1, w3: 4096 -> 2048; w2: 2048 -> 4096)
over 8192 tokens (16384 routed), the tokens sorted by expert, the outputs weighted and summed
back. Static shapes throughout (group sizes by scatter_add, no bincount), so the block
compiles whole and captures in CUDA graphs.

Variants: bf16; qtrain float8 rowwise and mxfp8 (qtrain.convert_moe_to_quantized_training on
the experts); torchao's float8 rowwise MoE conversion (quantize_ with its default
Float8TrainingOpConfig()) when one step of it runs in a child process (a device-side
assertion would end this one); a variant that fails prints why and is left out of the table. Modes: eager, torch.compile default, torch.compile
mode="reduce-overhead". A new x each step (two alternate). Rounds interleave the cases; a
case's time is the median of its steps over all rounds. Prints SQNR of each variant's output
against bf16, compiled against eager per variant, and a table last;
appends rows to benchmarks/results/results.csv (and $OUT/moe_block.csv when OUT is set).

    python benchmarks/moe_block.py [--rounds 3] [--reps 10] [--modes eager,default,reduce-overhead]
"""
import argparse
import copy
import os
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_rows, format_table, time_fn  # noqa: E402

E, TOP_K, TOKENS, DIM, HIDDEN = 8, 2, 8192, 4096, 2048
SHAPE = f"E{E} top{TOP_K} T{TOKENS} D{DIM} H{HIDDEN}"


class Experts(torch.nn.Module):
    """SwiGLU experts in the pattern qtrain.moe converts: w1, w3 (E, H, D), w2 (E, D, H)."""

    def __init__(self, gen):
        super().__init__()

        def weight(*shape):
            w = torch.randn(*shape, generator=gen, device="cuda") * shape[-1] ** -0.5
            return torch.nn.Parameter(w.to(torch.bfloat16))
        self.w1, self.w3 = weight(E, HIDDEN, DIM), weight(E, HIDDEN, DIM)
        self.w2 = weight(E, DIM, HIDDEN)

    def forward(self, x, offs):
        def mm(t, w):
            return torch._grouped_mm(t, w.transpose(-2, -1), offs=offs)
        return mm(F.silu(mm(x, self.w1)) * mm(x, self.w3), self.w2)


class MoEBlock(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.router = torch.nn.Linear(DIM, E, bias=False, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            self.router.weight.copy_(
                torch.randn(E, DIM, generator=gen, device="cuda") * DIM ** -0.5)
        self.experts = Experts(gen)

    def forward(self, x):
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weights, chosen = probs.topk(TOP_K, dim=-1)                         # (T, k)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // TOP_K
        sizes = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(sizes, 0, dtype=torch.int32)
        y = self.experts(x[token], offs) * weights.reshape(-1)[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, y)


def torchao_block(base):
    """torchao's float8 rowwise MoE conversion of a copy of base with its default config, as a
    user writes it (0.18: pad_token_groups_for_grouped_mm=True raises "not yet supported")."""
    from torchao.prototype.moe_training.config import Float8TrainingOpConfig
    from torchao.quantization import quantize_
    block = copy.deepcopy(base)
    quantize_(block.experts, Float8TrainingOpConfig(),
              filter_fn=lambda module, fqn: module is block.experts)
    return block


def torchao_failure():
    """None when one eager torchao step runs in a child process, else its error in one line.
    A device-side assertion (torch's grouped product on groups that are not 16-token
    multiples) leaves the process's CUDA context unusable, so it is probed apart."""
    import importlib.util
    import subprocess
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed"
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe-torchao"],
                           capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "its probe step did not finish in 300 s"
    if r.returncode == 0:
        return None
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Assertion" in ln or "Error" in ln]
    return (hits or lines or [f"exit status {r.returncode}"])[0][:400]


def probe_torchao():
    """One eager fwd+bwd of the torchao block (run in a child process by torchao_failure)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    block = torchao_block(MoEBlock(gen))
    x = (torch.randn(TOKENS, DIM, generator=gen, device="cuda") * 0.5).to(torch.bfloat16)
    block(x.requires_grad_()).sum().backward()
    torch.cuda.synchronize()
    return 0


def variants(gen):
    import qtrain
    base = MoEBlock(gen)
    out = {"bf16": base}
    for name, config in (
            ("qtrain float8 rowwise", qtrain.Float8LinearConfig(recipe="rowwise", backend="fast")),
            ("qtrain mxfp8", qtrain.MXLinearConfig(scale_mode="rceil", backend="fast"))):
        block = copy.deepcopy(base)
        qtrain.convert_moe_to_quantized_training(block.experts, config)
        out[name] = block
    failure = torchao_failure()
    if failure is None:
        out["torchao float8 rowwise"] = torchao_block(base)
    else:
        print(f"torchao float8 rowwise (default Float8TrainingOpConfig()) not timed: {failure}")
    return out


def sqnr_db(approx, exact):
    approx, exact = approx.double(), exact.double()
    return float(10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum()))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/moe_block.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--modes", default="eager,default,reduce-overhead")
    p.add_argument("--probe-torchao", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe_torchao:
        return probe_torchao()
    if not torch.cuda.is_available():
        print("moe_block: no CUDA device; skipped")
        return 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [(torch.randn(TOKENS, DIM, generator=gen, device="cuda") * 0.5).to(torch.bfloat16)
          for _ in range(2)]
    g = torch.randn(TOKENS, DIM, generator=gen, device="cuda").to(torch.bfloat16)
    blocks = variants(gen)
    modes = args.modes.split(",")
    runs = {}                 # label -> (callable, block)
    for name, block in blocks.items():
        for mode in modes:
            b = block if mode == "eager" else copy.deepcopy(block)
            fn = b if mode == "eager" else torch.compile(
                b, mode=None if mode == "default" else mode)
            runs[f"{name}, {mode}"] = (fn, b)

    def step_of(fn, block):
        turn = [0]

        def step():
            x = xs[turn[0] % 2].detach().requires_grad_()
            turn[0] += 1
            for prm in block.parameters():
                prm.grad = None
            out = fn(x)
            out.backward(g)
            return out, x.grad
        return step

    # numbers first: each case's output and input gradient on xs[0] (after warm-up calls,
    # which cudagraph trees need before they record)
    results, failed = {}, set()
    for label, (fn, block) in runs.items():
        try:
            step = step_of(fn, block)
            for _ in range(4):
                out, gx = step()           # the 4th call uses xs[1]; then xs[0] again
            out, gx = step()
            results[label] = (out.detach().clone(), gx.detach().clone())
        except Exception as e:    # noqa: BLE001
            failed.add(label)
            print(f"{label}: FAIL {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc(limit=3)
    ref = next(v for k, v in results.items() if k.startswith("bf16, eager"))
    for label, (out, gx) in results.items():
        print(f"{label:40s} output SQNR vs bf16 eager {sqnr_db(out, ref[0]):6.2f} dB, "
              f"grad_input {sqnr_db(gx, ref[1]):6.2f} dB")
    # compiled against eager, per variant: inductor fuses SwiGLU's elementwise ops in fp32, so
    # the bits may move (bf16's too); a quantized product lost under compile would show as a
    # drop to the ~24 dB of quantization noise
    for name in blocks:
        eager = results.get(f"{name}, eager")
        for mode in modes[1:] if modes[0] == "eager" else []:
            other = results.get(f"{name}, {mode}")
            if eager is not None and other is not None:
                same = all(torch.equal(a, b) for a, b in zip(eager, other))
                print(f"{name}, {mode} vs eager: " + ("bit-identical" if same else
                      f"output SQNR {sqnr_db(other[0], eager[0]):.1f} dB, "
                      f"grad_input {sqnr_db(other[1], eager[1]):.1f} dB"))

    times = {label: [] for label in runs if label not in failed}
    for _ in range(args.rounds):
        for label in times:
            fn, block = runs[label]
            times[label] += time_fn(step_of(fn, block), warmup=2, reps=args.reps,
                                    device="cuda")["times"]
    med = {label: statistics.median(t) for label, t in times.items()}
    rows, csv_rows = [], []
    for label, ms in med.items():
        name, mode = label.rsplit(", ", 1)
        bf16_same_mode = med.get(f"bf16, {mode}")
        rows.append([label, f"{ms:.3f}",
                     f"{med['bf16, eager'] / ms:.2f}x" if "bf16, eager" in med else "-",
                     f"{bf16_same_mode / ms:.2f}x" if bf16_same_mode else "-"])
        backend = name.split(" ")[0] if name != "bf16" else "torch"
        csv_rows.append(dict(op="moe_block_fwd_bwd", backend=f"{backend}-{mode}",
                             recipe=name, shape=SHAPE, metric="ms_median", value=f"{ms:.4f}"))
    append_rows(csv_rows)
    if os.environ.get("OUT"):
        append_rows(csv_rows, os.path.join(os.environ["OUT"], "moe_block.csv"))
    print(format_table([f"MoE block fwd+bwd ({SHAPE})", "ms", "vs bf16 eager",
                        "vs bf16 same mode"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
