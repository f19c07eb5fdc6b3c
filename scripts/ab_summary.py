#!/usr/bin/env python3
"""scripts/ab_summary.py — a baseline's runs against the current build's, from the app's JSON
reports (apps/subliminal --json): the median of each timing, and current ÷ baseline.

    scripts/ab_summary.py BASELINE.json... -- CURRENT.json...

scripts/gpu_check.sh --baseline DIR runs the two builds alternately and calls this. Accuracies
are printed too: the same seed on the same path gives the same numbers, so a change in them
says the change altered the arithmetic (expected where summation order changed).
"""
import json
import statistics
import sys


def load(paths):
    reports = []
    for p in paths:
        try:
            with open(p) as f:
                reports.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"ab_summary.py: {p}: {e}", file=sys.stderr)
    return reports


def rows(reports):
    """name -> list of values over the reports, for the timings and accuracies we compare."""
    out = {}
    def add(name, value):
        out.setdefault(name, []).append(value)
    for r in reports:
        add("GPU s in training", r.get("gpu_seconds", {}).get("training", float("nan")))
        for phase, us in r.get("us_per_step", {}).items():
            add(f"µs/step {phase}", us)
        add("wall s (whole run)", r.get("seconds", {}).get("total", float("nan")))
        for arm in ("teacher", "student", "cross_init"):
            if arm in r:
                add(f"accuracy {arm}", r[arm]["test_acc"])
    return out


def main(argv):
    if "--" not in argv:
        print("usage: scripts/ab_summary.py BASELINE.json... -- CURRENT.json...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    base, cur = rows(load(argv[:cut])), rows(load(argv[cut + 1:]))
    if not base or not cur:
        print("ab_summary.py: no readable reports on one side", file=sys.stderr)
        return 2
    print(f"A/B, medians of {len(next(iter(base.values())))} baseline and {len(next(iter(cur.values())))} current runs:")
    print(f"  {'':24s} {'baseline':>10s} {'current':>10s} {'current/baseline':>17s}")
    for name in list(base) + [n for n in cur if n not in base]:
        b = statistics.median(base[name]) if name in base else None
        c = statistics.median(cur[name]) if name in cur else None
        ratio = f"{c / b:17.3f}" if b and c is not None and not name.startswith("accuracy") else ""
        show = lambda v: f"{v:10.4f}" if v is not None else f"{'—':>10s}"
        print(f"  {name:24s} {show(b)} {show(c)} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
