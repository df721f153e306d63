"""Append to the local results CSV the rows a GPU run added to its copy (gpu_session.sh returns
benchmarks/results/results.csv in $OUT): every row of the returned file that the local file
does not hold yet, in the returned file's order.

    python -m benchmarks.merge_results /work/.device/N/results.csv
"""
import argparse
import csv

from . import common


def merge(returned: str, local: str = common.RESULTS_CSV) -> int:
    have = {tuple(r[c] for c in common.CSV_COLUMNS) for r in common.read_rows(local)}
    new = [r for r in common.read_rows(returned)
           if tuple(r[c] for c in common.CSV_COLUMNS) not in have]
    if new:
        with open(local, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=common.CSV_COLUMNS)
            for r in new:
                w.writerow({c: r[c] for c in common.CSV_COLUMNS})
    return len(new)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("returned", help="results.csv that came back from the GPU run")
    p.add_argument("--into", default=common.RESULTS_CSV, help="local results CSV")
    args = p.parse_args(argv)
    print(f"appended {merge(args.returned, args.into)} rows to {args.into}")


if __name__ == "__main__":
    main()
