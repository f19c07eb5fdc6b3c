#!/usr/bin/env python3
"""scripts/ab_summary.py — a baseline's runs against the current build's, from the app's JSON
reports (apps/subliminal --json): the median of each timing, and current ÷ baseline.

    scripts/ab_summary.py BASELINE.json... -- CURRENT.json...

scripts/gpu_check.sh --baseline DIR runs the two builds alternately and calls this. Accuracies
are printed too: the same seed on the same path gives the same numbers, so a change in them
says the change altered the arithmetic (expected where summation order changed).

A file that cannot be read, is not JSON, or is not shaped like the app's report (an object with
"seconds"; gpu_seconds, us_per_step, us_per_step_steady and seconds holding numbers; arms holding
a numeric test_acc; a number too large for a float, or nesting too deep to parse) stops the summary
with one line naming it on stderr and exit status 2, as does a side with no files.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_io  # noqa: E402  (bench/bench_io.py: no torch, no numpy)


def die(message):
    print(f"ab_summary.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def is_number(v):
    """A JSON number, or null (the app writes a NaN as null). An integer beyond a float's range is
    not one: the medians and the table's float formats would raise OverflowError on it."""
    return v is None or isinstance(v, float) or bench_io.is_finite_number(v)


def num(v):
    return float("nan") if v is None else v


def report_problem(r):
    """Why r is not shaped like the app's --json report (one line), or None."""
    if not isinstance(r, dict):
        return f"a JSON {type(r).__name__}, not the app's --json report (an object)"
    if "seconds" not in r:
        return "no seconds: not the app's --json report"
    for key in ("gpu_seconds", "us_per_step", "us_per_step_steady", "seconds"):
        part = r.get(key, {})
        if not isinstance(part, dict) or not all(is_number(v) for v in part.values()):
            return f"{key}: expected an object of numbers"
    for arm in ("teacher", "student", "cross_init"):
        if arm in r and not (isinstance(r[arm], dict) and is_number(r[arm].get("test_acc"))):
            return f"{arm}: expected an object with a numeric test_acc"
    return None


def load(paths):
    reports = []
    for p in paths:
        try:
            reports.append(bench_io.read_json(p, report_problem))
        except ValueError as e:
            die(str(e))
    return reports


def rows(reports):
    """name -> list of values over the reports, for the timings and accuracies we compare."""
    out = {}
    def add(name, value):
        out.setdefault(name, []).append(value)
    for r in reports:
        add("GPU s in training", num(r.get("gpu_seconds", {}).get("training")))
        for phase, us in r.get("us_per_step", {}).items():
            add(f"µs/step {phase}", num(us))
        for phase, us in r.get("us_per_step_steady", {}).items():  # the epochs after the first
            add(f"µs/step {phase}, steady", num(us))
        add("wall s (whole run)", num(r.get("seconds", {}).get("total")))
        for arm in ("teacher", "student", "cross_init"):
            if arm in r:
                add(f"accuracy {arm}", num(r[arm]["test_acc"]))
    return out


def main(argv):
    if "--" not in argv:
        print("usage: scripts/ab_summary.py BASELINE.json... -- CURRENT.json...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    if cut == 0 or cut == len(argv) - 1:
        die(f"no report files {'before' if cut == 0 else 'after'} -- "
            "(usage: scripts/ab_summary.py BASELINE.json... -- CURRENT.json...)")
    base, cur = rows(load(argv[:cut])), rows(load(argv[cut + 1:]))
    print(f"A/B, medians of {len(next(iter(base.values())))} baseline and {len(next(iter(cur.values())))} current runs:")
    print(f"  {'':31s} {'baseline':>10s} {'current':>10s} {'current/baseline':>17s}")
    for name in list(base) + [n for n in cur if n not in base]:
        b = statistics.median(base[name]) if name in base else None
        c = statistics.median(cur[name]) if name in cur else None
        ratio = f"{c / b:17.3f}" if b and c is not None and not name.startswith("accuracy") else ""
        show = lambda v: f"{v:10.4f}" if v is not None else f"{'—':>10s}"
        print(f"  {name:31s} {show(b)} {show(c)} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
