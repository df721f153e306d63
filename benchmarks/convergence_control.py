"""Control runs for the convergence comparison (issue 9): is a difference to bf16 the
quantization, or the setup? Trains the demo's tiny model (CPU, reference backend) from each seed:

- bf16: plain nn.Linear under autocast (the baseline of benchmarks.convergence);
- int8:none: qtrain's quantized-linear autograd path with all three products in high precision,
  so any difference to bf16 would come from the path, not from quantization;
- int8:o, int8:iw, int8:oiw: int8 on the output product, on the two gradient products, on all;
- any recipe name (rowwise, mxfp8, ...).

    python -m benchmarks.convergence_control --seeds 1,2,3 --runs int8:none,int8:o,int8:iw,int8:oiw,rowwise
"""
import argparse
import dataclasses
import sys

from qtrain import demo
from qtrain.config import Int8LinearConfig
from qtrain.text_corpus import StdlibCorpus

from . import common
from .convergence import SIZES


@dataclasses.dataclass(frozen=True)
class _Int8Products(Int8LinearConfig):
    """Int8LinearConfig that also allows no int8 product at all (the control path); the
    library refuses that on purpose (an unconverted layer does the same), so it lives here."""

    def __post_init__(self):
        if self.output or self.grad_input or self.grad_weight:
            super().__post_init__()


def config_for(name):
    """int8:<letters> (o = output, i = grad_input, w = grad_weight, none) or a recipe name."""
    if name.startswith("int8:"):
        which = name[5:]
        if which != "none" and (not which or set(which) - set("oiw")):
            raise ValueError(f"convergence_control: {name!r}: use int8:none or int8: followed "
                             f"by letters from o, i, w")
        which = "" if which == "none" else which
        return _Int8Products(output="o" in which, grad_input="i" in which,
                             grad_weight="w" in which, backend="reference")
    return demo.recipe_config(name)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence_control",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--runs", default="int8:none,int8:o,int8:iw,int8:oiw,rowwise")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [r for r in args.runs.split(",") if r]
    configs = {r: config_for(r) for r in runs}          # bad names fail before any training
    corpus = StdlibCorpus()
    rows = []
    for seed in seeds:
        settings = demo.RunSettings(device="cpu", compile=False, precision="bf16", seed=seed,
                                    outlier_gain=0.0, **SIZES["tiny"])
        base = None
        for name in ["bf16"] + runs:
            r = demo.train_one(name, configs.get(name), settings, corpus,
                               progress=demo.Progress(open("/dev/null", "w")))
            base = r.val_loss if base is None else base
            rel = (r.val_loss - base) / base
            rows.append([str(seed), name, f"{r.val_loss:.6f}", f"{r.final_train_loss:.6f}",
                         "-" if name == "bf16" else f"{100 * rel:+.2f}%"])
            print(f"seed {seed} {name:10s} val {r.val_loss:.6f}", flush=True)
    print(common.format_table(["seed", "run", "val loss", "train loss", "vs bf16"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
