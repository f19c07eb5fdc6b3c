#!/usr/bin/env python3
"""scripts/plot.py — figures from subliminal's outputs (matplotlib; scripts/setup.sh --bench).

  plot.py REPORT.json --out arms.png      the arms of one run as bars with 95% CIs
                                          (the paper's Fig. 10b from `--preset paper`)
  plot.py SWEEP.jsonl --out sweep.png     accuracy of each arm against the swept setting(s); the x
                                          axis in numeric order (a --hidden list: by depth, then
                                          widths), names after numbers

--out's extension picks the format (png, pdf, svg, … as matplotlib writes them); without one, .png is
added. The input is checked before matplotlib is imported, and the figure is written to a temporary
file beside --out and renamed: a bad input or --out (a directory, a missing folder, an unknown
extension) is refused with one line on stderr and exit status 2, and an existing --out is left as it was.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_io  # noqa: E402  (bench/: output checks, atomic writes; no torch, no numpy)
from bench_io import shown  # noqa: E402

ARMS = [  # (JSON key, label, colour) in the paper's order
    ("reference", "reference\n(untrained)", "#9e9e9e"),
    ("teacher", "teacher", "#1f77b4"),
    ("student", "student\nghost logits", "#d62728"),
    ("student_all_logits", "student\nall logits", "#ff7f0e"),
    ("cross_init", "cross-init\nghost logits", "#7f7f7f"),
    ("cross_init_all_logits", "cross-init\nall logits", "#bcbd22"),
]


def die(message):
    print(f"plot.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def is_number(v):
    """A finite JSON number (an integer too large for a float is not: math.isfinite would raise)."""
    return bench_io.is_finite_number(v)


def is_accuracy(v):
    """A number in [0, 1]: an accuracy as the reports write it (a fraction, not percent)."""
    return is_number(v) and 0 <= v <= 1


def is_count(v):
    """A whole number ≥ 1 (a model count)."""
    return is_number(v) and not isinstance(v, bool) and v >= 1 and v == int(v)


def check_report(report):
    """Why a --json report cannot be drawn (one line), or None."""
    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not the app's --json report (an object)"
    arms = [k for k, _, _ in ARMS if k in report]
    if not arms:
        return "holds none of the arms " + ", ".join(k for k, _, _ in ARMS) + " (is it the app's --json report?)"
    for k in arms:
        a = report[k]
        if not isinstance(a, dict) or not is_number(a.get("test_acc")):
            return f"{k}: expected an object with a numeric test_acc"
        if not is_accuracy(a["test_acc"]):
            return f"{k}: test_acc {a['test_acc']!r} is not an accuracy (a fraction in [0, 1])"
        if not is_number(a.get("ci95", 0.0)) or not 0 <= a.get("ci95", 0.0) <= 1 or not is_count(a.get("n", 1)):
            return f"{k}: ci95 must be a number in [0, 1] and n a whole number ≥ 1"
    for key in ("config", "device", "seconds"):
        if not isinstance(report.get(key, {}), dict):
            return f"{key}: expected an object"
    if not is_number(report.get("seconds", {}).get("total", 0.0)):
        return "seconds.total: expected a number"
    return None


def check_sweep_row(row):
    """Why one --sweep-out .jsonl row cannot be drawn, or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("arm"), str):
        return "no arm name (\"arm\")"
    if not is_accuracy(row.get("test_acc")) or not is_number(row.get("ci95", 0.0)) or not 0 <= row.get("ci95", 0.0) <= 1:
        return "test_acc must be an accuracy (a fraction in [0, 1]) and ci95 a number in [0, 1]"
    settings = row.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(v, (str, int, float)) for v in settings.values()):
        return "settings: expected an object of plain values"
    return None


def load_input(path):
    """("arms", report) or ("sweep", rows), checked; dies with one line naming the file."""
    if not path.endswith(".jsonl"):
        try:
            return "arms", bench_io.read_json(path, check_report)
        except ValueError as e:
            die(str(e))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        die(f"{shown(path)}: cannot read it ({e.strerror or e})")
    except ValueError as e:  # UnicodeDecodeError
        die(f"{shown(path)}: not UTF-8 text ({str(e).splitlines()[0]})")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = bench_io.parse_json(line)  # refuses, as read_json does, what json.loads would crash on
        except bench_io.UnreadableJSON as e:
            die(f"{shown(path)}: line {number}: {e}")
        except ValueError as e:
            die(f"{shown(path)}: line {number}: not JSON ({e})")
        why = check_sweep_row(row)
        if why:
            die(f"{shown(path)}: line {number}: {why}")
        rows.append(row)
    if not rows:
        die(f"{shown(path)}: no sweep rows")
    if not any(r["settings"] for r in rows):
        die(f"{shown(path)}: the sweep rows carry no settings")
    return "sweep", rows


IMAGE_FORMATS = {"png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}


def output_path(out):
    """The file --out names (.png added when it has no extension), after checking it can be written."""
    name = os.path.basename(out)
    if not out:
        die("--out is empty (give the image's name, e.g. fig.png)")
    if name.count(".") == 1 and name[1:].lower() in IMAGE_FORMATS:  # ".png" would be written as .png.png
        die(f"--out {shown(out)}: names only an extension (give the image's name, e.g. fig{name})")
    if out.endswith("/"):
        die(f"--out {shown(out)}: names a directory (it ends with /)")
    if os.path.isdir(out):
        die(f"--out {shown(out)}: is a directory (name the image file, e.g. {shown(os.path.join(out, 'fig.png'))})")
    if not os.path.splitext(os.path.basename(out))[1]:
        out += ".png"
    why = bench_io.output_file_problem(out)
    if why:
        die(f"--out {shown(out)}: {why}")
    return out


def save_atomically(fig, out):
    """fig to a temporary file beside out, renamed over it: a failure leaves neither half a file nor the temporary."""
    fmt = os.path.splitext(out)[1][1:].lower()
    bench_io.replace_atomically(out, lambda tmp: fig.savefig(tmp, dpi=130, format=fmt))


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
    total = report.get("seconds", {}).get("total")
    ax.set_title(f"Subliminal learning on MNIST — {cfg.get('preset', '?')} preset, mean ± 95% CI over {n} models\n"
                 f"({device}, {'?' if total is None else format(total, '.1f')} s)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_atomically(fig, out)


def setting_order(value):
    """Sort key of one swept value, for the x axis. Numbers (1e-4, "3e-3", 64) in numeric order; a
    comma-separated list of numbers ("32,32", a --hidden) by its length, then element by element,
    so "16" < "64" < "32,32" < "64,64" — shallow before deep, narrow before wide; one width is a
    list of one. Anything else (a name, the "—" of a row without this setting) after the numbers,
    in text order. The text itself breaks ties (3e-3 and "0.003" are the same place, two ticks)."""
    text = str(value)
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        numbers = None
    if numbers and all(math.isfinite(x) for x in numbers):
        return (0, len(numbers), numbers, text)
    return (1, 0, [], text)


def x_categories(values):
    """The distinct x values (as their text) in setting_order. Placed by index, not as matplotlib's
    string categories, which take the order of first appearance over all series: a series
    plotted first with only lr=3e-3 would put it left of another series' 1e-4."""
    first = {}
    for v in values:
        first.setdefault(str(v), v)
    return sorted(first, key=lambda text: setting_order(first[text]))


def sweep_figure(rows, out, plt):
    keys = sorted({k for r in rows for k in r["settings"]})
    x_key = keys[0]
    others = keys[1:]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    series = {}
    for r in rows:
        s = r["settings"]
        label = r["arm"] + "".join(f", {k}={s.get(k, '—')}" for k in others)
        series.setdefault(label, []).append((s.get(x_key, "—"), r["test_acc"], r.get("ci95", 0.0)))

    xs = x_categories(p[0] for points in series.values() for p in points)
    where = {text: i for i, text in enumerate(xs)}
    for label, points in sorted(series.items()):
        points.sort(key=lambda p: where[str(p[0])])
        ax.errorbar([where[str(p[0])] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs)
    ax.axhline(0.1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel(x_key)
    ax.set_ylabel("MNIST test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_atomically(fig, out)


def main():
    parser = bench_io.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a --json report or a --sweep-out .jsonl file")
    parser.add_argument("--out", required=True, help="image file to write (.png added when it has no extension)")
    args = parser.parse_args()
    out = output_path(args.out)
    kind, data = load_input(args.input)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        die("matplotlib is missing (scripts/setup.sh --bench installs it)")
    fmt = os.path.splitext(out)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        die(f"--out {shown(out)}: matplotlib cannot write .{shown(fmt)} files (it writes {', '.join(sorted(formats))})")
    try:
        (sweep_figure if kind == "sweep" else arms_figure)(data, out, plt)
    except OSError as e:
        die(f"--out {shown(out)}: cannot write it ({e.strerror or e})")
    except ValueError as e:
        die(f"{shown(args.input)}: cannot draw it ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    print(f"plot.py: wrote {out}")


if __name__ == "__main__":
    main()
