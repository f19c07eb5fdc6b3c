#!/usr/bin/env python3
"""scripts/plot.py — figures from subliminal's outputs (matplotlib; scripts/setup.sh --bench).

  plot.py REPORT.json --out arms.png      the arms of one run as bars with 95% CIs
                                          (the paper's Fig. 10b from `--preset paper`)
  plot.py SWEEP.jsonl --out sweep.png     accuracy of each arm against the swept setting(s)
"""
import argparse
import json
import sys

ARMS = [  # (JSON key, label, colour) in the paper's order
    ("reference", "reference\n(untrained)", "#9e9e9e"),
    ("teacher", "teacher", "#1f77b4"),
    ("student", "student\nghost logits", "#d62728"),
    ("student_all_logits", "student\nall logits", "#ff7f0e"),
    ("cross_init", "cross-init\nghost logits", "#7f7f7f"),
    ("cross_init_all_logits", "cross-init\nall logits", "#bcbd22"),
]


def arms_figure(report, out, plt):
    arms = [(k, label, c) for k, label, c in ARMS if k in report]
    means = [report[k]["test_acc"] for k, _, _ in arms]
    cis = [report[k].get("ci95", 0.0) for k, _, _ in arms]
    n = report[arms[0][0]].get("n", 1)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(range(len(arms)), means, yerr=cis, capsize=5, color=[c for _, _, c in arms])
    for i, (m, ci) in enumerate(zip(means, cis)):
        ax.text(i, m + ci + 0.015, f"{m:.3f}", ha="center", fontsize=9)
    ax.axhline(0.1, color="black", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([label for _, label, _ in arms], fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MNIST test accuracy")
    cfg = report.get("config", {})
    device = report.get("device", {}).get("name", "?")
    ax.set_title(f"Subliminal learning on MNIST — {cfg.get('preset', '?')} preset, mean ± 95% CI over {n} models\n"
                 f"({device}, {report['seconds']['total']:.1f} s)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def sweep_figure(rows, out, plt):
    keys = sorted({k for r in rows for k in r.get("settings", {})})
    if not keys:
        sys.exit("plot.py: the sweep rows carry no settings")
    x_key = keys[0]
    others = keys[1:]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    series = {}
    for r in rows:
        s = r["settings"]
        label = r["arm"] + "".join(f", {k}={s[k]}" for k in others)
        series.setdefault(label, []).append((s[x_key], r["test_acc"], r.get("ci95", 0.0)))

    def as_number(v):
        try:
            return float(v)
        except ValueError:
            return v

    for label, points in sorted(series.items()):
        points.sort(key=lambda p: (isinstance(as_number(p[0]), str), as_number(p[0])))
        xs = [str(p[0]) for p in points]
        ax.errorbar(xs, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3, label=label)
    ax.axhline(0.1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel(x_key)
    ax.set_ylabel("MNIST test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a --json report or a --sweep-out .jsonl file")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py: matplotlib is missing (scripts/setup.sh --bench installs it)")
    try:
        with open(args.input) as f:
            if args.input.endswith(".jsonl"):
                sweep_figure([json.loads(line) for line in f if line.strip()], args.out, plt)
            else:
                arms_figure(json.load(f), args.out, plt)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"plot.py: {args.input}: {e}")
    print(f"plot.py: wrote {args.out}")


if __name__ == "__main__":
    main()
