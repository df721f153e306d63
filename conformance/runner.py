"""Run cases against a backend: every output compared bitwise or within MM-4; one result per case."""
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import bits, compare, distributed, grouped_casts, grouped_linear, linear, ops, products
from .compare import Check


@dataclass(frozen=True)
class OpDef:
    inputs: Optional[Callable]       # case -> inputs (NumPy)
    reference: Optional[Callable]    # case, inputs -> {output: array}
    backend: Optional[Callable]      # case, inputs, backend, device -> {output: array}
    independent: Optional[Callable] = None   # case, inputs -> {output: array} (expected "ml_dtypes")
    bounds: Optional[Callable] = None        # compare "bound": case, inputs -> {output: compare.Bound}
    prop: Optional[Callable] = None          # case, reference outputs -> {output: want}: a property
                                             # (BW-5) the reference must satisfy, judged bitwise
    api: bool = False                # a rule of qtrain's API (qtrain.linear, recipe_config, convert):
                                     # raise cases are judged on the backend side only
    required: tuple = ()             # case fields the op needs besides cases.REQUIRED
    run: Optional[Callable] = None   # case, backend, device, subject -> [Check]: an op judged as a
                                     # whole, its expectation the backend's own single-process run
                                     # (distributed); inputs / reference / backend are then unused
    expected: tuple = ()             # `expected` values the op takes besides reference / ml_dtypes
    validate: Optional[Callable] = None      # case -> None, raises ValueError on bad fields


_Q = dict(inputs=ops.quantize_inputs, reference=ops.quantize_reference, backend=ops.quantize_backend)
_D = dict(inputs=ops.dequantize_inputs, reference=ops.dequantize_reference, backend=ops.dequantize_backend)
_RECIPE = ("recipe", "dtype", "input", "products", "plans")
OPS = {
    **{name: OpDef(**_Q) for name in ops.QUANTIZE},
    **{name: OpDef(**_D) for name in ops.DEQUANTIZE},
    "float32_to_e8m0_rceil": OpDef(ops.e8m0_inputs, ops.e8m0_reference, ops.e8m0_backend),
    "e8m0_to_float": OpDef(ops.e8m0_inputs, ops.e8m0_reference, ops.e8m0_backend, ops.e8m0_ml_dtypes),
    "float8_to_float64": OpDef(ops.decode_inputs, ops.decode_reference, ops.decode_backend,
                               ops.decode_ml_dtypes),
    "quantize_blockwise_pair": OpDef(ops.blockwise_pair_inputs, ops.blockwise_pair_reference,
                                     ops.blockwise_pair_backend, prop=ops.blockwise_pair_property,
                                     required=("block", "block_t", "input")),
    **{name: OpDef(grouped_casts.inputs, grouped_casts.reference, grouped_casts.backend,
                   required=("format", "input") + (("offs", "align") if "grouped" in name else ()))
       for name in ("quantize_float8_grouped_t", "quantize_float8_experts_t")},
    "uniform_noise": OpDef(ops.noise_inputs, ops.noise_reference, ops.noise_backend,
                           ops.noise_python, required=("seed", "call")),
    "scaled_mm_nt": OpDef(products.mm_inputs, products.mm_reference, products.mm_backend,
                          bounds=products.mm_bounds),
    "scaled_grouped_mm": OpDef(products.grouped_inputs, products.grouped_reference,
                               products.grouped_backend, bounds=products.grouped_bounds),
    "linear": OpDef(linear.linear_inputs, linear.linear_reference, linear.linear_backend,
                    bounds=linear.linear_bounds, api=True, required=_RECIPE + ("bias",)),
    "grouped_mm": OpDef(grouped_linear.grouped_linear_inputs, grouped_linear.grouped_linear_reference,
                        grouped_linear.grouped_linear_backend,
                        bounds=grouped_linear.grouped_linear_bounds, api=True,
                        required=_RECIPE + ("offs",)),
    "convert_linear": OpDef(linear.convert_inputs, linear.convert_reference, linear.convert_backend,
                            api=True, required=("recipe", "fqn", "filter", "eligible")),
    "distributed": OpDef(None, None, None, run=distributed.run, expected=distributed.EXPECTED,
                         validate=distributed.validate, required=distributed.REQUIRED),
}


@dataclass
class CaseResult:
    case: dict
    status: str = "pass"             # pass | fail | skip | xfail (a case's known_failure, failing)
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mismatches(self):
        return sum(c.mismatches for c in self.checks)

    @property
    def worst(self):
        values = [c.worst for c in self.checks if c.worst is not None]
        return max(values) if values else None

    def first_bad(self):
        return next((f"[{c.subject}] {c.first_bad}" for c in self.checks if not c.ok), None)

    def as_dict(self):
        c = self.case
        return {"name": c["name"], "op": c["op"], "format": format_label(c), "rules": c["rules"],
                "file": c["file"], "status": self.status, "mismatches": self.mismatches,
                "worst_vs_bound": self.worst, "first_bad": self.first_bad(), "notes": self.notes,
                "seconds": round(self.seconds, 3), "checks": [k.as_dict() for k in self.checks]}


def format_label(case):
    if case["op"] == "distributed":
        return f"{case['recipe']} {case['dtype']} x{case['ranks']}"
    if "recipe" in case:
        return case.get("plan", case["recipe"])
    if "operands" in case or "a" in case:
        a, b = products.operand_spec(case, "a"), products.operand_spec(case, "b")
        side = lambda s: f"{s.get('quant')}:{s.get('format', 'int8')}"
        return side(a) if side(a) == side(b) else f"{side(a)} x {side(b)}"
    return case.get("format", "int8" if "int8" in case["op"] else "-")


def _output_dtype(case, output):
    if output == "data":
        return "int8" if case["op"].endswith("int8") else case["format"]
    if output in ("quant_scale", "dequant_scale"):
        return "float32"
    if output == "scale_bits":
        return "uint8"
    return "float64" if case["op"] in ("e8m0_to_float", "float8_to_float64") else case.get("out_dtype", "float32")


def literal_expected(case, like):
    """{output: array} from the case's literal bits; shapes follow the reference's outputs."""
    out = {}
    for output, spec in case["expected"].items():
        shape = spec.get("shape") or (like[output].shape if like and output in like else None)
        out[output] = bits.from_hex(spec["bits"], _output_dtype(case, output), shape, spec.get("pad"))
    return out


def _judge(case, subject, got, expected, inputs, op):
    checks = []
    terms = op.bounds(case, inputs) if case["compare"] == "bound" else {}
    for output, want in expected.items():
        if output not in got:
            checks.append(Check(output, subject, False, 1, 1, first_bad=f"{output}: not returned"))
        elif output in terms:
            checks.append(compare.bound(output, subject, got[output], want, terms[output]))
        else:
            checks.append(compare.bitwise(output, subject, got[output], want))
    return checks


def _error(subject, exc):
    return Check("error", subject, False, 1, 1,
                 first_bad=f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=-2).strip()}")


def _run_raises(case, backend, device, subject, result):
    op = OPS[case["op"]]
    want = case["raises"]
    # An API rule (qtrain.linear, recipe_config, convert) has no NumPy-reference side to raise.
    sides = [] if op.api else [("reference", lambda: op.reference(case, op.inputs(case)))]
    if backend is not None:
        # The payload is built outside the backend only for products; quantize ops get raw x.
        sides.append((subject, lambda: op.backend(case, op.inputs(case), backend, device)))
    for who, call in sides:
        try:
            call()
            exc = None
        except ops.OpMissing as e:
            result.notes.append(f"{who}: skipped ({e})")
            continue
        except Exception as e:  # the exception under test
            exc = e
        result.checks.append(compare.raised(who, exc, want["type"], want["match"]))


def run_case(case, backend=None, device="cpu", subject="backend"):
    """Judge one case. backend=None checks the reference alone (golden and ml_dtypes cases)."""
    result = CaseResult(case)
    start = time.perf_counter()
    try:
        if "raises" in case:
            _run_raises(case, backend, device, subject, result)
        elif OPS[case["op"]].run is not None:
            if backend is None:
                result.notes.append("skipped: judges a backend against its own single-process "
                                    "run; no backend given")
            else:
                result.checks += OPS[case["op"]].run(case, backend, device, subject)
        else:
            _run_values(case, backend, device, subject, result)
    except ops.OpMissing as e:
        result.notes.append(f"skipped: {e}")
    except Exception as e:  # harness-side failure (bad case data, reference crash): a failure
        result.checks.append(_error("harness", e))
    result.seconds = time.perf_counter() - start
    if any(not c.ok for c in result.checks):
        result.status = "fail"
    elif not result.checks or any(n.startswith(f"{subject}: skipped") or n.startswith("skipped")
                                  for n in result.notes):
        result.status = "skip"
        if not result.notes:
            result.notes.append("skipped: nothing to compare (no backend given and no golden "
                                "or property expectation)")
    served = getattr(backend, "harness_served", ())
    if result.status != "skip" and _method_name(case) in served:
        result.notes.append(f"{subject}: {_method_name(case)} served by the harness adapter "
                            f"(conformance/backends.py), the backend has none")
    _known_failure(result)
    return result


def _method_name(case):
    return case["op"] if case["op"] in ops.DEQUANTIZE or case["op"] in (
        "float32_to_e8m0_rceil", "e8m0_to_float", "float8_to_float64") else None


def _known_failure(result):
    """A case's `known_failure` (a spec/implementation divergence, with its reason) turns its
    failure into xfail, shown with the reason; a known failure that passes is a failure, so that
    the entry is removed once the divergence is settled."""
    reason = result.case.get("known_failure")
    if not reason:
        return
    if result.status == "fail":
        result.status = "xfail"
        first = (result.first_bad() or "").split(" | Traceback")[0].splitlines()[0]
        result.notes.append(f"known failure: {reason} | got: {first}")
    elif result.status == "pass":
        result.status = "fail"
        result.checks.append(Check("known_failure", "case", False, 1, 1,
                                   first_bad=f"passes now; remove its known_failure ({reason})"))


def _run_values(case, backend, device, subject, result):
    op = OPS[case["op"]]
    inputs = op.inputs(case)
    ref_out = op.reference(case, inputs)
    expected = case["expected"]
    if op.prop is not None:
        # A property of the op (BW-5): the reference must satisfy it, bit for bit.
        for output, want in op.prop(case, ref_out).items():
            result.checks.append(compare.bitwise(output, "reference", ref_out[output], want))
    if isinstance(expected, dict) or expected == "ml_dtypes":
        # Golden / independent cases also judge the reference itself: every other case trusts it.
        want = literal_expected(case, ref_out) if isinstance(expected, dict) else op.independent(case, inputs)
        result.checks += _judge(case, "reference", ref_out, want, inputs, op)
    else:
        want = {name: ref_out[name] for name in ref_out}
    if backend is None:
        return
    try:
        got = op.backend(case, inputs, backend, device)
    except ops.OpMissing as e:
        result.notes.append(f"{subject}: skipped ({e})")
        return
    except Exception as e:
        result.checks.append(_error(subject, e))
        return
    result.checks += _judge(case, subject, got, want, inputs, op)


def run_cases(cases, backend=None, device="cpu", subject="backend", on_result=None):
    results = []
    for case in cases:
        r = run_case(case, backend, device, subject)
        results.append(r)
        if on_result:
            on_result(r)
    return results
