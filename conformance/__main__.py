"""`python -m qtrain.conformance`: judge a backend against qtrain.reference on the case files."""
import argparse
import sys

from .backends import BackendUnavailable, known_names, resolve
from .cases import load_cases, select
from .report import environment, print_table, write_report
from .runner import run_cases


def _default_device():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m qtrain.conformance", description=__doc__)
    p.add_argument("--backend", default="fast",
                   help="registry name (fast, reference, fast-interpret, torch-cpu, ...) or "
                        "'pkg.module:factory'; default fast")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="only the CPU quick set (quick: true)")
    p.add_argument("--cases", default=None, help="glob(s) over case name, op or file, comma separated")
    p.add_argument("--report", default="conformance-report.json", help="JSON report path")
    p.add_argument("--list", action="store_true", help="list the selected cases and backends, run nothing")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cases = select(load_cases(), quick=args.quick, pattern=args.cases)
    if args.list:
        for c in cases:
            print(f"{c['file']:<22} {c['op']:<22} {c['name']}  [{', '.join(c['rules'])}]")
        for name, (ok, reason) in known_names().items():
            print(f"backend {name}: {'available' if ok else 'unavailable'} ({reason})")
        return 0
    if not cases:
        print(f"no cases match --cases {args.cases!r} (quick={args.quick})", file=sys.stderr)
        return 2
    device = args.device or _default_device()
    try:
        backend = resolve(args.backend)
    except BackendUnavailable as e:
        print(f"qtrain.conformance: {e}", file=sys.stderr)
        return 2
    results = run_cases(cases, backend, device, subject=args.backend)
    print_table(results)
    write_report(args.report, results, environment(args.backend, device), vars(args))
    print(f"report: {args.report}")
    return 1 if any(r.status == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
