"""Load, validate and select the case files (conformance/cases/*.json): the harness holds no values.

A case file is {"about": str, "defaults": {...}, "cases": [{...}, ...]}; each case is merged over
the file's defaults. README.md documents every field.
"""
import fnmatch
import json
import re
from pathlib import Path

CASES_DIR = Path(__file__).parent / "cases"
LABEL = re.compile(r"^[A-Z][A-Z0-9]*-\d+$")
COMPARES = ("bitwise", "bound")
REQUIRED = ("name", "why", "rules", "op", "shape", "expected", "compare", "quick")


class CaseError(ValueError):
    """A malformed case file: names the file, the case and the field."""


def _check(case, where, ops):
    for key in REQUIRED:
        if key not in case:
            raise CaseError(f"{where}: missing field {key!r}")
    if case["op"] not in ops:
        raise CaseError(f"{where}: unknown op {case['op']!r}; known: {sorted(ops)}")
    if not case["rules"] or not all(isinstance(r, str) and LABEL.match(r) for r in case["rules"]):
        raise CaseError(f"{where}: rules must be a non-empty list of labels like 'MX-4', got {case['rules']!r}")
    if case["compare"] not in COMPARES:
        raise CaseError(f"{where}: compare must be one of {COMPARES}, got {case['compare']!r}")
    if not isinstance(case["quick"], bool):
        raise CaseError(f"{where}: quick must be true or false")
    expected = case["expected"]
    op = ops[case["op"]]
    named = ("reference", "ml_dtypes") + tuple(getattr(op, "expected", ()))
    if not (expected in named or isinstance(expected, dict)):
        raise CaseError(f"{where}: expected must be one of {list(named)} or literal bits per output")
    if "raises" in case:
        if set(case["raises"]) != {"type", "match"}:
            raise CaseError(f"{where}: raises needs exactly 'type' and 'match'")
        match = case["raises"]["match"]
        if not (isinstance(match, str) or (isinstance(match, list) and all(isinstance(m, str) for m in match))):
            raise CaseError(f"{where}: raises.match must be a string or a list of strings")
    if "known_failure" in case and not (isinstance(case["known_failure"], str) and case["known_failure"]):
        raise CaseError(f"{where}: known_failure must be a non-empty reason")
    required = getattr(op, "required", ())
    if required:
        missing = [k for k in required if k not in case]
        if missing:
            raise CaseError(f"{where}: op {case['op']!r} needs field(s) {missing}")
        if getattr(op, "validate", None) is not None:
            try:
                op.validate(case)
            except ValueError as e:
                raise CaseError(f"{where}: {e}") from None
    elif not any(k in case for k in ("input", "a")):
        raise CaseError(f"{where}: needs 'input' (one operand) or 'a'/'b' (products)")


def load_cases(directory=CASES_DIR, ops=None):
    """Every case of every file, validated, in file then listed order; names are unique."""
    if ops is None:
        from .runner import OPS
        ops = OPS
    cases, seen = [], {}
    for path in sorted(Path(directory).glob("*.json")):
        doc = json.loads(path.read_text())
        defaults = doc.get("defaults", {})
        for i, raw in enumerate(doc["cases"]):
            case = {**defaults, **raw, "file": path.name}
            where = f"{path.name} case {i} ({case.get('name', '?')})"
            _check(case, where, ops)
            if case["name"] in seen:
                raise CaseError(f"{where}: name also used in {seen[case['name']]}")
            seen[case["name"]] = path.name
            cases.append(case)
    return cases


def select(cases, quick=False, pattern=None):
    """The quick subset and/or the cases whose name, op or file matches the glob pattern."""
    out = [c for c in cases if c["quick"] or not quick]
    if pattern:
        pats = pattern.split(",")
        out = [c for c in out if any(fnmatch.fnmatch(c["name"], p) or fnmatch.fnmatch(c["op"], p)
                                     or fnmatch.fnmatch(c["file"], p) for p in pats)]
    return out
