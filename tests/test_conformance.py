"""The conformance quick set as pytest (conformance/README.md): ids are the case names."""
import glob
import os
import re
from pathlib import Path

import pytest
import torch

from qtrain.conformance import compare
from qtrain.conformance.__main__ import main
from qtrain.conformance.backends import BackendUnavailable, resolve
from qtrain.conformance.cases import load_cases, select
from qtrain.conformance.runner import OPS, run_case

ALL = load_cases()
QUICK = select(ALL, quick=True)
# Judged on the NumPy reference alone: golden and ml_dtypes cases, properties the reference must
# satisfy (BW-5), and raise cases of the numeric ops (an API rule's raise, e.g. RC-2, has no
# reference side: it is judged on each backend below). Distributed cases judge a backend against
# its own single-process run: backends only.
SELF_CHECKED = [c for c in QUICK if OPS[c["op"]].run is None and (
                c["expected"] != "reference" or OPS[c["op"]].prop is not None
                or ("raises" in c and not OPS[c["op"]].api))]
# Judged on CPU: the torch adapter of the reference, the independent torch restatement, and the
# fast backend's Triton kernels under the interpreter (TRITON_INTERPRET=1).
BACKENDS = ("reference", "torch-cpu", "fast-interpret")
SPEC = Path(__file__).resolve().parents[1] / "spec"
LABEL = re.compile(r"\*\*([A-Z][A-Z0-9]*-\d+)\*\*")


def _verdict(result):
    assert result.status != "fail", (
        f"{result.case['name']} ({', '.join(result.case['rules'])}): {result.mismatches} mismatches; "
        f"first: {result.first_bad()}")
    if result.status == "skip":
        pytest.skip("; ".join(result.notes) or "nothing to compare")
    if result.status == "xfail":        # the case's known_failure: a divergence with its reason
        pytest.xfail("; ".join(result.notes))


@pytest.mark.parametrize("case", SELF_CHECKED, ids=[c["name"] for c in SELF_CHECKED])
def test_reference_self_check(case):
    """Golden literal cases and ml_dtypes decode cases judge the NumPy reference itself."""
    _verdict(run_case(case, backend=None))


_BACKEND_CACHE = {}


def _backend(name):
    if name not in _BACKEND_CACHE:
        try:
            _BACKEND_CACHE[name] = resolve(name)
        except (BackendUnavailable, ImportError) as e:
            _BACKEND_CACHE[name] = e
    found = _BACKEND_CACHE[name]
    if isinstance(found, Exception):
        pytest.skip(f"backend {name} unavailable: {found}")
    return found


@pytest.mark.parametrize("case", QUICK, ids=[c["name"] for c in QUICK])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_backend_quick_set(backend_name, case):
    _verdict(run_case(case, _backend(backend_name), "cpu", subject=backend_name))


def _spec_labels():
    labels = set()
    for path in glob.glob(str(SPEC / "*.md")):
        labels |= set(LABEL.findall(Path(path).read_text()))
    return labels


def test_every_spec_label_has_a_case():
    labels = _spec_labels()
    assert labels, f"no labelled rules found under {SPEC}"
    used = {r for c in ALL for r in c["rules"]}
    missing = sorted(labels - used)
    assert not missing, f"spec rules without a conformance case: {missing}"


def test_every_case_label_is_in_spec():
    labels = _spec_labels()
    prefixes = {l.split("-")[0] for l in labels}
    unknown = sorted({r for c in ALL for r in c["rules"] if r.split("-")[0] in prefixes} - labels)
    assert not unknown, f"cases cite labels that spec/ does not define: {unknown}"


def test_quick_set_is_small():
    """CI budget: the quick set stays on small shapes (the interpreter runs every element).
    convert_linear cases build their layer on the meta device: their shape allocates nothing."""
    def size(c):
        return max(1, *(int(v) for v in c["shape"]))
    big = [c["name"] for c in QUICK if c["op"] != "convert_linear" and size(c) > 512]
    assert not big, f"quick cases with a dimension over 512: {big}"


def test_first_mismatch_shows_value_and_bits():
    import numpy as np
    got = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    want = np.array([1.0, 2.0, 3.5], dtype=np.float32)
    check = compare.bitwise("out", "demo", got, want)
    assert not check.ok and check.mismatches == 1
    assert "out[2]" in check.first_bad and "0x40400000" in check.first_bad
    assert "s=0 e=10000000 m=10000000000000000000000" in check.first_bad


def test_cli_import_path_backend(tmp_path):
    """A user backend named as module:factory is judged by the same command."""
    report = tmp_path / "r.json"
    rc = main(["--backend", "qtrain.conformance.independent:TorchCpuBackend", "--quick",
               "--cases", "mx_golden_*,int8_golden_*", "--report", str(report)])
    assert rc == 0 and report.exists()


def test_linear_case_catches_a_wrong_backend():
    """The recipe cases have teeth: a backend that drops rowwise's pow2 scales (F8-3, RC-5) is
    caught through qtrain.linear, while the same backend passes a recipe without pow2."""
    from qtrain.conformance.backends import resolve as resolve_backend

    class NoPow2:
        name = "no-pow2"

        def __init__(self, inner):
            self._inner = inner

        def quantize_float8(self, x, fmt, axis, pow2_scale, transposed=False):
            return self._inner.quantize_float8(x, fmt, axis, False, transposed=transposed)

        def __getattr__(self, attr):
            return getattr(self._inner, attr)

    wrong = NoPow2(resolve_backend("reference"))
    by_name = {c["name"]: c for c in ALL}
    assert run_case(by_name["linear_rowwise_fp32_bias"], wrong, "cpu", "no-pow2").status == "fail"
    assert run_case(by_name["linear_tensorwise_bf16"], wrong, "cpu", "no-pow2").status == "pass"


def test_known_failure_that_passes_fails():
    """A known_failure entry must go once its divergence is settled: a passing case with one fails."""
    case = dict(next(c for c in QUICK if c["name"] == "linear_int8_fp32"), known_failure="demo")
    result = run_case(case, _backend("reference"), "cpu", "reference")
    assert result.status == "fail" and "remove its known_failure" in result.first_bad()


_WRONG_POW2 = '''
class WrongPow2:
    """The reference, but every float8 quant_scale rounded down to a power of two (drops F8-2)."""
    name = "wrong-pow2"

    def __init__(self):
        from qtrain.conformance.backends import resolve
        self._inner = resolve("reference")

    def quantize_float8(self, x, fmt, axis, pow2_scale, transposed=False):
        return self._inner.quantize_float8(x, fmt, axis, True, transposed=transposed)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)
'''


def test_distributed_case_catches_a_wrong_backend(tmp_path, monkeypatch):
    """The distributed cases have teeth: under the float8 all-gather the weight is cast by
    qtrain.fsdp with the global amax (F8-2), in one process by the backend; a backend with the
    wrong tensorwise scale is caught in the ranks it is rebuilt in (by import path)."""
    import sys
    (tmp_path / "wrong_pow2_backend.py").write_text(_WRONG_POW2)
    monkeypatch.syspath_prepend(str(tmp_path))       # spawned ranks inherit sys.path
    spec = "wrong_pow2_backend:WrongPow2"
    case = next(c for c in QUICK if c["name"] == "fsdp_float8_all_gather_tensorwise_fp32_2r")
    result = run_case(case, resolve(spec), "cpu", subject=spec)
    sys.modules.pop("wrong_pow2_backend", None)
    assert result.status == "fail" and "rank0" in result.first_bad(), result.as_dict()


def test_distributed_case_fields_are_validated(tmp_path):
    """A distributed case that asks for a bound its scenario does not define (P-FSDP is bitwise
    only), or names another claim, is refused when the files load."""
    import json
    from qtrain.conformance.cases import CaseError
    base = dict(name="d", why="w", rules=["RC-4"], op="distributed", scenario="fsdp",
                claim="P-FSDP", recipe="tensorwise", ranks=2, dtype="float32",
                shape=[16, 32, 64, 32], expected="single_process", compare="bitwise", quick=False)
    for bad, match in ((dict(within_bound=["grad"]), "defines bounds"),
                       (dict(claim="P-COL"), "checks claim"), (dict(ranks=3), "ranks")):
        (tmp_path / "d.json").write_text(json.dumps({"about": "", "cases": [{**base, **bad}]}))
        with pytest.raises(CaseError, match=match):
            load_cases(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps({"about": "", "cases": [base]}))
    assert load_cases(tmp_path)[0]["scenario"] == "fsdp"


def test_fast_interpret_leaves_a_gpu_machines_kernels_compiled(monkeypatch):
    """The fast-interpret harness backend sets TRITON_INTERPRET=1 only where there is no CUDA:
    Triton reads it for every kernel decorated later in the process, so on a GPU machine the
    kernel modules imported afterwards (and inductor's kernels) would run interpreted."""
    from qtrain.conformance import backends
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backends._fast_interpret()
    assert "TRITON_INTERPRET" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backends._fast_interpret()
    assert os.environ.get("TRITON_INTERPRET") == "1"
