"""The printed table (op x format x case) and the JSON report (date, GPU, versions, backend)."""
import datetime
import json
import platform
import sys

COLUMNS = ("op", "format", "case", "result", "mismatches", "worst/bound", "s")


def environment(backend_name, device):
    import ml_dtypes
    import numpy as np
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available() else None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": backend_name, "device": str(device), "gpu": gpu,
            "torch": torch.__version__, "triton": triton_version, "numpy": np.__version__,
            "ml_dtypes": ml_dtypes.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "cuda": torch.version.cuda}


def row(result):
    c = result.case
    worst = result.worst
    return (c["op"], _fmt(result), c["name"], result.status.upper(), str(result.mismatches),
            "-" if worst is None else f"{worst:.3g}", f"{result.seconds:.2f}")


def _fmt(result):
    from .runner import format_label
    return format_label(result.case)


def print_table(results, out=sys.stdout):
    rows = [COLUMNS] + [row(r) for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for i, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for r in results:
        if r.status == "fail":
            print(f"FAIL {r.case['name']} ({', '.join(r.case['rules'])}): {r.first_bad()}", file=out)
        for note in r.notes:
            print(f"note {r.case['name']}: {note}", file=out)
    counts = summary(results)
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped, "
          f"{counts['xfail']} known failures (xfail) of {len(results)} cases", file=out)


def summary(results):
    counts = {"pass": 0, "fail": 0, "skip": 0, "xfail": 0}
    for r in results:
        counts[r.status] += 1
    return counts


def write_report(path, results, env, args):
    doc = {**env, "arguments": args, "summary": summary(results),
           "results": [r.as_dict() for r in results]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
