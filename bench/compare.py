#!/usr/bin/env python3
"""bench/compare.py — the engine against PyTorch on the seed notebook's experiment, in one table.

Runs, on each device asked for, `--repeats K` times each (round-robin, so drift hits every row alike):
  engine                    build/apps/subliminal (its own JSON: seconds.*, us_per_step, gpu_seconds)
  torch faithful            bench/torch_subliminal.py --variant faithful (the notebook as written);
                            with --faithful-epochs E it runs at most E epochs of each phase and its
                            times are extrapolated to the full run (marked "extrapolated")
  torch fast                --variant fast (tensors on the device, eager)
  torch fast+cuda-graphs    (cuda only) the training step captured as a CUDA graph
  torch fast+compile        (cuda only by default) torch.compile'd loss and Adam step

and prints one table (medians over the repeats) plus, with --json, the same as JSON. Every run also
leaves its own JSON report and log in --outdir. --divergence js runs the Jensen-Shannon ablation in
the engine and the fast variants (the faithful one, the notebook as written, has only the KL).

  python3 bench/compare.py --device cpu --repeats 1 --faithful-epochs 1
  python3 bench/compare.py --device cuda --faithful-epochs 1 --json bench-h100.json

This script needs no torch itself; the torch runs use --python (default: this python if it has torch,
else the first of python3, /usr/bin/python3 that does).

Bad flags and paths (a negative count, an --outdir that is a file, a --json that cannot be written,
a --data or set $MNIST_DIR without the MNIST files or with a damaged one, a missing engine, an
--engine-args flag the engine does not know) are refused with one line on
stderr and exit status 2 before anything
runs; --outdir (default: a new temp directory) is made only
when runs start. A run that fails, times out or leaves a report without the table's numbers is a
failed run: its row says why (the log's last line). Torch rows asked for where no python has torch
are failed rows too. --json: the report is written (atomically: a temporary file beside it,
renamed) after every run once at least one run has succeeded — so partial results survive a kill —
and at the end; a session in which no run succeeded writes nothing there, so an existing file is
never replaced by a report of failures only. Exit status: 0 when every row has a run, 1 when a row has none or the
session was stopped (SIGTERM, or Ctrl-C during the runs), 2 for bad input, 130 for Ctrl-C before any run.
"""
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import bench_io
from bench_io import shown
from machine import cpu_model, usable_cores

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TORCH_SCRIPT = os.path.join(HERE, "torch_subliminal.py")
ALL_VARIANTS = ["engine", "faithful", "fast", "fast+cuda-graphs", "fast+compile"]


def die(message, code=2):
    print(f"compare.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def note(message):
    print(f"compare.py: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- machine


def nvidia_gpus():
    """[(name, driver, memory)] from nvidia-smi, [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    return [tuple(x.strip() for x in line.split(",")) for line in r.stdout.strip().splitlines() if line.strip()]


def python_with_torch(preferred):
    candidates = [preferred] if preferred else [sys.executable, "python3", "/usr/bin/python3"]
    for py in candidates:
        exe = shutil.which(py) or (py if os.path.isfile(py) else None)
        if not exe:
            continue
        try:
            r = subprocess.run([exe, "-c", "import torch, numpy; print(torch.__version__, int(torch.cuda.is_available()))"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip():
            version, cuda = r.stdout.split()
            return os.path.abspath(exe), version, cuda == "1"
    return None, None, False


# ---------------------------------------------------------------------------------------------- runs


class Spec:
    def __init__(self, name, device, cmd, kind, repeats, extrapolate_to=None):
        self.name, self.device, self.cmd, self.kind, self.repeats = name, device, cmd, kind, repeats
        self.extrapolate_to = extrapolate_to  # (epochs_teacher, epochs_distill) of the full run, or None
        self.runs = []
        self.failures = []


def training_numbers(report, device):
    """train seconds (host wall of the training phases), µs per step (GPU time on cuda), steady µs/step."""
    secs = report.get("seconds", {})
    train = secs.get("teacher", 0.0) + secs.get("distill_ghosts", 0.0)
    steps = report.get("steps", {})
    nsteps = steps.get("teacher", 0) + steps.get("distill_ghosts", 0)
    timed = train
    gpu = None
    if device == "cuda" and "gpu_seconds" in report:
        # The phases the steps count: gpu_seconds.training also holds the all-logit arms' phase
        # (--all-logit-arms, the paper preset), whose steps are not among nsteps.
        g = report["gpu_seconds"]
        gpu = g.get("teacher", 0.0) + g.get("distill_ghosts", 0.0)
        timed = gpu
    us = 1e6 * timed / nsteps if nsteps else None
    # Steady: the warm epochs' time over their steps, all phases together (each phase's µs/step
    # weighted by the steps it covers; a phase of one epoch has none).
    steady = None
    st, warm = report.get("us_per_step_steady") or {}, report.get("steps_steady") or {}
    warm_steps = sum(warm.get(k, 0) for k in st)
    if warm_steps:
        steady = sum(st[k] * warm.get(k, 0) for k in st) / warm_steps
    return train, gpu, us, steady, nsteps


def evals_done(report, epochs_teacher, epochs_distill, arms):
    """Test-set evaluations a faithful run makes: reference, teacher per epoch, final teacher, arms per
    epoch (with no distillation epochs, each arm once: its untrained copy is still evaluated)."""
    return 1 + epochs_teacher + 1 + max(epochs_distill, 1) * arms


def shortened_epochs(faithful_epochs, epochs_teacher, epochs_distill):
    """The (teacher, distillation) epochs of a shortened faithful run: at most E of each phase, never
    more than the full run has (a phase of 0 epochs stays 0: it is not timed, nor its student trained);
    None when E is 0 (the full run) or shortens nothing."""
    if not faithful_epochs or faithful_epochs >= max(epochs_teacher, epochs_distill):
        return None
    return min(faithful_epochs, epochs_teacher), min(faithful_epochs, epochs_distill)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite_number(v):
    return is_number(v) and math.isfinite(v)


def report_problem(report):
    """Why `report` cannot give a row of the table (one line), or None. What the table needs: the
    training phases' seconds and steps, and the teacher's accuracy; NaN or Inf times are refused
    (an accuracy may be null: JSON has no NaN, and a NaN is written as null). A phase of 0 epochs
    may be missing: the app writes no distillation phase when --epochs-distill is 0."""
    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not the app's --json report (an object)"
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    for part in ("seconds", "steps"):
        values = report.get(part)
        for phase, epochs in (("teacher", "epochs_teacher"), ("distill_ghosts", "epochs_distill")):
            if isinstance(values, dict) and phase not in values and config.get(epochs) == 0:
                continue
            if not isinstance(values, dict) or not is_finite_number(values.get(phase)) or values[phase] < 0:
                return f"{part}.{phase}: expected a number ≥ 0 (is it the app's --json report?)"
    for key in ("gpu_seconds", "us_per_step_steady", "steps_steady"):
        values = report.get(key, {})
        if not isinstance(values, dict) or not all(is_finite_number(v) for v in values.values()):
            return f"{key}: expected an object of finite numbers"
    for arm in ("reference", "teacher", "student", "cross_init"):
        if arm in report and not (isinstance(report[arm], dict) and
                                  (report[arm].get("test_acc") is None or is_finite_number(report[arm]["test_acc"]))):
            return f"{arm}: expected an object with a numeric test_acc"
    if not isinstance(report.get("teacher"), dict):
        return "no teacher accuracy (is it the app's --json report?)"
    return None


def read_run(report, spec, wall, json_path, log_path):
    """One run's numbers from its JSON report (one that report_problem passed); ValueError/TypeError/...
    when it is still not the shape the app and torch_subliminal.py write."""
    train, gpu, us, steady, nsteps = training_numbers(report, spec.device)
    acc = {k: report[k]["test_acc"] for k in ("reference", "teacher", "student", "cross_init") if k in report}
    bad = [k for k, v in [("train", train), ("us_per_step", us), ("steady", steady), *acc.items()]
           if v is not None and not is_number(v)]
    if bad:
        raise ValueError(f"{', '.join(bad)} not numbers")
    run = {"wall": wall, "train": train, "gpu_train": gpu, "us_per_step": us, "us_per_step_steady": steady,
           "steps": nsteps, "json": json_path, "log": log_path,
           "total_reported": report.get("seconds", {}).get("total"), "acc": acc,
           "framework": report.get("framework", "engine"), "device_name": report.get("device", {}).get("name"),
           "graphs_failed": report.get("cuda_graphs_failed")}
    if spec.extrapolate_to:
        cfg = report.get("config", {})
        et, ed = cfg.get("epochs_teacher", 1), cfg.get("epochs_distill", 1)
        ft, fd = spec.extrapolate_to
        secs = report.get("seconds", {})
        arms = 2 if cfg.get("cross_init") else 1
        t_s, d_s, ev = secs.get("teacher", 0.0), secs.get("distill_ghosts", 0.0), secs.get("eval", 0.0)
        train_full = (t_s / et * ft if et else 0.0) + (d_s / ed * fd if ed else 0.0)
        n_ev, n_ev_full = evals_done(report, et, ed, arms), evals_done(report, ft, fd, arms)
        eval_full = ev / n_ev * n_ev_full
        run["measured"] = {"wall": wall, "train": train, "epochs_teacher": et, "epochs_distill": ed}
        run["wall"] = wall - train - ev + train_full + eval_full
        run["train"] = train_full
        if gpu is not None:
            g = report.get("gpu_seconds", {})
            run["gpu_train"] = ((g.get("teacher", 0.0) / et * ft if et else 0.0)
                                + (g.get("distill_ghosts", 0.0) / ed * fd if ed else 0.0))
        run["acc_epochs"] = f"{et}+{ed}"
        if not all(is_number(run[k]) for k in ("wall", "train")):
            raise ValueError("seconds.* or config.epochs_* are not numbers")
    return run


def run_files(spec, outdir, index):
    """The report and the log run `index` of spec leaves in outdir."""
    tag = f"{spec.name.replace(' ', '_').replace('+', '_')}-{spec.device}-{index}"
    return os.path.join(outdir, tag + ".json"), os.path.join(outdir, tag + ".log")


def run_once(spec, outdir, index, timeout):
    """Runs spec once; appends the run to spec.runs, or a one-line reason to spec.failures."""
    json_path, log_path = run_files(spec, outdir, index)
    cmd = spec.cmd + ["--json", json_path]
    note(f"[{spec.name} on {spec.device}, run {index}] {' '.join(cmd)}")
    t0 = time.perf_counter()
    try:
        if os.path.lexists(json_path):
            os.remove(json_path)
        with open(log_path, "w") as log:
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        rc = r.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    except OSError as e:
        rc = f"cannot start: {e}"
    wall = time.perf_counter() - t0
    if rc != 0 or not os.path.isfile(json_path):
        tail = []
        try:
            with open(log_path, errors="replace") as f:
                tail = [line.rstrip() for line in f.readlines()[-8:] if line.strip()]
        except OSError:
            pass
        if rc == 0:
            rc = "0 without writing its --json report"
        # The row's reason is the log's last line (a Python traceback ends with the error itself);
        # the note shows the log's tail.
        spec.failures.append(f"exit {rc}: {tail[-1].strip() if tail else '(nothing in its log)'}")
        note(f"  FAILED (exit {rc}) after {wall:.1f} s; log {log_path}" + "".join("\n    " + t for t in tail))
        return
    reason, run = None, None
    try:
        report = bench_io.read_json(json_path, report_problem)
    except ValueError as e:  # names the file
        reason = f"unusable report {e}"
    else:
        try:
            run = read_run(report, spec, wall, json_path, log_path)
        except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as e:
            reason = f"unusable report {shown(json_path)}: {type(e).__name__}: {e}"
    if reason:
        reason = reason.replace("\n", " ")
        spec.failures.append(reason)
        note(f"  FAILED after {wall:.1f} s: {reason}")
        return
    spec.runs.append(run)
    extra = f" (extrapolated to {spec.extrapolate_to[0]}+{spec.extrapolate_to[1]} epochs: {run['wall']:.1f} s)" \
        if spec.extrapolate_to else ""
    acc = run["acc"]
    note(f"  {wall:.1f} s wall{extra}; teacher {fmt(acc.get('teacher'), '.4f')} "
         f"student {fmt(acc.get('student'), '.4f')} cross-init {fmt(acc.get('cross_init'), '.4f')}")


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(spec):
    if not spec.runs:
        return {"variant": spec.name, "device": spec.device, "runs": 0, "failures": spec.failures}
    out = {"variant": spec.name, "device": spec.device, "runs": len(spec.runs),
           "wall_s": med([r["wall"] for r in spec.runs]), "train_s": med([r["train"] for r in spec.runs]),
           "gpu_train_s": med([r["gpu_train"] for r in spec.runs]),
           "us_per_step": med([r["us_per_step"] for r in spec.runs]),
           "us_per_step_steady": med([r["us_per_step_steady"] for r in spec.runs]),
           "acc": {k: med([r["acc"].get(k) for r in spec.runs]) for k in ("reference", "teacher", "student", "cross_init")},
           "extrapolated": bool(spec.extrapolate_to), "framework": spec.runs[0]["framework"],
           "device_name": spec.runs[0]["device_name"], "failures": spec.failures,
           "per_run": spec.runs}
    if spec.extrapolate_to:
        out["acc_epochs"] = spec.runs[0].get("acc_epochs")
    if any(r.get("graphs_failed") for r in spec.runs):
        out["cuda_graphs_failed"] = [r["graphs_failed"] for r in spec.runs if r.get("graphs_failed")]
    return out


def with_ratios(rows):
    """Each row that ran gains wall_x_engine and train_x_engine: its median over the engine's median on
    the same device (None without an engine row there, or where the engine's time is 0). The table
    prints them; --json keeps them, so a reader of the file need not redo the division."""
    engine = {r["device"]: r for r in rows if r["variant"] == "engine" and r.get("runs")}
    for r in rows:
        if r.get("runs"):
            e = engine.get(r["device"])
            r["wall_x_engine"] = r["wall_s"] / e["wall_s"] if e and e["wall_s"] else None
            r["train_x_engine"] = r["train_s"] / e["train_s"] if e and e["train_s"] else None
    return rows


def fmt(v, spec=".1f", missing="—"):
    return missing if v is None else format(v, spec)


def print_table(machine, rows, threads):
    print()
    print(f"Machine: {machine['cpu']} ({machine['cores']} cores; {threads} threads for engine and torch)"
          + (f"; GPU: {machine['gpu']}" if machine.get("gpu") else ""))
    if machine.get("torch"):
        print(f"PyTorch: {machine['torch']} ({machine['python']})")
    if machine.get("engine_build"):
        print(f"Engine: build {machine['engine_build']}")
    if machine.get("engine_args"):
        print(f"Engine flags: {' '.join(machine['engine_args'])}")
    if machine.get("divergence", "kl") != "kl":
        print(f"Students' loss: {machine['divergence']} (--divergence; the notebook's is kl)")
    print("Medians over the runs. wall = the whole process (start, data, training, evaluation, exit); "
          "train = host wall of the training phases;\nµs/step = training time per step (GPU-event time on cuda), "
          "one distillation step advancing every arm; steady = epochs after the first.\n")
    hdr = (f"{'variant':<24} {'device':<6} {'runs':>4} {'wall s':>9} {'train s':>9} {'µs/step':>9} {'steady':>9} "
           f"{'teacher':>8} {'student':>8} {'cross':>7} {'wall×eng':>9} {'train×eng':>9}")
    print(hdr)
    print("-" * len(hdr))
    notes = []
    for r in with_ratios(rows):
        if not r.get("runs"):
            print(f"{r['variant']:<24} {r['device']:<6} {'0':>4}  FAILED: {(r['failures'] or ['?'])[0][:80]}")
            continue
        wr, tr = r["wall_x_engine"], r["train_x_engine"]
        name = r["variant"] + (" *" if r.get("extrapolated") else "")
        acc = r["acc"]
        mark = "†" if r.get("extrapolated") else ""
        print(f"{name:<24} {r['device']:<6} {r['runs']:>4} {fmt(r['wall_s']):>9} {fmt(r['train_s'], '.2f'):>9} "
              f"{fmt(r['us_per_step'], '.0f'):>9} {fmt(r['us_per_step_steady'], '.0f'):>9} "
              f"{fmt(acc['teacher'], '.4f') + mark:>8} {fmt(acc['student'], '.4f') + mark:>8} "
              f"{fmt(acc['cross_init'], '.4f') + mark:>7} {fmt(wr, '.2f'):>9} {fmt(tr, '.2f'):>9}")
        if r.get("extrapolated"):
            notes.append(f"* {r['variant']} on {r['device']}: extrapolated — ran {r.get('acc_epochs')} epochs; "
                         "times scaled per epoch (and per evaluation) to the full run; † its accuracies are "
                         "those of the shorter run")
        if r.get("cuda_graphs_failed"):
            notes.append(f"! {r['variant']} on {r['device']}: CUDA graph capture failed, ran eagerly: "
                         f"{r['cuda_graphs_failed'][0]}")
        if r.get("failures"):
            notes.append(f"! {r['variant']} on {r['device']}: {len(r['failures'])} failed run(s): {r['failures'][0][:200]}")
    for n in notes:
        print(n)
    print("×eng: this row's median over the engine's median on the same device (above 1: slower than the engine).")


# The engine's flags that compare.py sets on every engine run (run_spec adds --json).
ENGINE_FLAGS_SET_HERE = ("--data", "--threads", "--seed", "--no-progress", "--epochs-teacher", "--epochs-distill",
                         "--divergence", "--device", "--json")


# The engine's flags that change the experiment itself. The PyTorch rows run the notebook's, so an
# engine row with one of these would answer another question beside them (its accuracies and its
# time both): allowed only when the engine runs alone (--variants engine). --eval-every-epoch is
# among them although it changes no accuracy: the PyTorch programs evaluate every epoch, and the
# wall time would not be the same work.
ENGINE_FLAGS_CHANGING_THE_EXPERIMENT = (
    "--preset", "--models", "--ghosts", "--hidden", "--batch-size", "--lr", "--temperature", "--init", "--noise",
    "--noise-set", "--weight-decay", "--init-perturb", "--cross-init", "--all-logit-arms", "--eval-every-epoch",
    "--train-samples", "--load-init", "--sweep", "--sweep-out", "--parity-batch")


def parse_args():
    p = bench_io.ArgumentParser(description="Engine vs PyTorch on the notebook experiment: one table.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the CPU rows, plus the cuda rows when a GPU is found")
    p.add_argument("--engine", default=os.path.join(REPO, "build", "apps", "subliminal"))
    p.add_argument("--data", default="", help="MNIST IDX directory (raw or .gz)")
    p.add_argument("--repeats", type=bench_io.positive_int, default=3, help="runs of each engine / fast variant")
    p.add_argument("--faithful-repeats", type=bench_io.non_negative_int, default=None,
                   help="runs of the faithful notebook (default 1)")
    p.add_argument("--faithful-epochs", type=bench_io.epochs_type, default=None,
                   help="run the faithful notebook with at most E teacher and E distillation epochs and extrapolate "
                        "(0: full run)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of " + ",".join(ALL_VARIANTS) + " (default: all)")
    p.add_argument("--cpu-compile", action="store_true", help="also run fast+compile on the CPU")
    p.add_argument("--python", default="", help="python with torch for the torch runs")
    p.add_argument("--threads", type=bench_io.threads_type, default=0,
                   help=f"CPU threads for engine and torch, 0..{bench_io.MAX_THREADS} (0: all usable cores)")
    p.add_argument("--seed", type=bench_io.seed_type, default=0)
    p.add_argument("--epochs-teacher", type=bench_io.epochs_type, default=5)
    p.add_argument("--epochs-distill", type=bench_io.epochs_type, default=5)
    p.add_argument("--divergence", choices=["kl", "js"], default="kl",
                   help="the students' loss, for the engine and the fast variants: kl (the notebook's) or js "
                        "(Jensen-Shannon, an ablation; the faithful variant, the notebook as written, has no JS)")
    p.add_argument("--outdir", default="", help="per-run JSON reports and logs (default: a new temp directory)")
    p.add_argument("--json", type=bench_io.output_file, default="",
                   help="write the table as JSON here (only once a run has succeeded)")
    p.add_argument("--timeout", type=bench_io.positive_int, default=1800, help="seconds allowed per run")
    p.add_argument("--engine-args", default="",
                   help="extra flags for the engine's runs, e.g. \"--gemm tiled\" or --no-graphs "
                        "(split like a shell would)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(bench_io.glued_flag_value(sys.argv[1:], "--engine-args"))
    if args.variants is None:
        args.wanted = list(ALL_VARIANTS)
    else:
        args.wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not args.wanted:
            die(f"--variants {shown(args.variants)}: names no variant; choose from {','.join(ALL_VARIANTS)}")
        bad = [v for v in args.wanted if v not in ALL_VARIANTS]
        if bad:
            die(f"--variants: unknown {', '.join(map(shown, bad))}; choose from {','.join(ALL_VARIANTS)}")
    try:
        args.engine_argv = shlex.split(args.engine_args)
    except ValueError as e:
        die(f"--engine-args {shown(args.engine_args)}: {e}")
    # Flags this script gives every engine run itself: given again, each run would fail ("given 2
    # times") after the table had started.
    for word in args.engine_argv:
        flag = word.split("=", 1)[0]
        if flag in ENGINE_FLAGS_SET_HERE:
            die(f"--engine-args {shown(args.engine_args)}: {flag} is set by compare.py for every engine run "
                f"(use its own option, if it has one: --data, --threads, --seed, --epochs-teacher, --epochs-distill, "
                f"--divergence, --device)")
    changing = [w.split("=", 1)[0] for w in args.engine_argv if w.split("=", 1)[0] in ENGINE_FLAGS_CHANGING_THE_EXPERIMENT]
    if changing and "engine" in args.wanted and [v for v in args.wanted if v != "engine"]:
        die(f"--engine-args {shown(args.engine_args)}: {changing[0]} changes the experiment, and the PyTorch rows "
            f"run the notebook's, so the table would compare two experiments; time it alone with --variants engine")
    # options that the other options make meaningless: said, not silently dropped
    if "faithful" not in args.wanted:
        for flag, value in (("--faithful-epochs", args.faithful_epochs), ("--faithful-repeats", args.faithful_repeats)):
            if value is not None:
                note(f"{flag} does nothing without the faithful variant in --variants")
    if args.cpu_compile and ("fast+compile" not in args.wanted or args.device == "cuda"):
        note("--cpu-compile does nothing without the fast+compile variant on the CPU")
    if args.engine_argv and "engine" not in args.wanted:
        note("--engine-args does nothing without the engine variant in --variants")
    if args.python and args.wanted == ["engine"]:
        note("--python does nothing when only the engine runs")
    if args.divergence != "kl" and args.epochs_distill == 0:  # the engine refuses it: no student is distilled
        die(f"--divergence {args.divergence} and --epochs-distill 0: no student is distilled, so it would change "
            "nothing; drop one")
    if args.divergence == "js" and "faithful" in args.wanted:
        if args.variants is not None:
            die("--divergence js: the faithful variant is the notebook as written, whose loss is the KL; "
                "leave it out of --variants")
        args.wanted.remove("faithful")
        note("--divergence js: the faithful variant (the notebook as written, KL only) is left out")
    args.faithful_repeats = 1 if args.faithful_repeats is None else args.faithful_repeats
    args.faithful_epochs = args.faithful_epochs or 0
    if args.outdir:
        why = bench_io.output_dir_problem(args.outdir)
        if why:
            die(f"--outdir {shown(args.outdir)}: {why}")
    return args


def find_torch(args, torch_wanted):
    """(python, torch version, has CUDA, why the torch rows cannot run or None)."""
    if not torch_wanted:
        return None, None, False, None
    py, torch_version, torch_cuda = python_with_torch(args.python)
    if py:
        return py, torch_version, torch_cuda, None
    if args.python:
        die(f"--python {shown(args.python)}: cannot import torch and numpy with it")
    # The torch rows stay in the table, as failed rows saying why.
    return None, None, False, "no python with torch and numpy (tried this one, python3, /usr/bin/python3; see --python)"


def devices_to_run(args, gpus, torch_cuda):
    has_gpu = bool(gpus) or torch_cuda
    if args.device == "cuda" and not has_gpu:
        die("--device cuda: no GPU found (nvidia-smi lists none and torch.cuda.is_available() is False)")
    if args.device in ("cpu", "cuda"):
        return [args.device]
    return ["cpu", "cuda"] if has_gpu else ["cpu"]


def engine_build_of(engine):
    """The commit the engine was built from (its --version's first line), kept with the numbers."""
    try:
        version = subprocess.run([engine, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if version.returncode == 0 and version.stdout.startswith("subliminal "):
        return version.stdout.splitlines()[0][len("subliminal "):]
    return None


def refuse_engine_args_the_engine_refuses(engine, engine_argv):
    """--engine-args the engine would refuse as a command line (an unknown flag, a value flag
    without its value), found before any run: the engine parses its flags before it answers
    --version, so one short call says. (A bad value is checked after that, by each run.)"""
    if not engine_argv:
        return
    try:
        r = subprocess.run([engine, *engine_argv, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return  # said when the runs start
    if r.returncode == 2:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        die(f"--engine-args: the engine refuses them: {lines[-1].strip() if lines else '(exit 2)'}")


def plan_specs(args, devices, threads, data_dir, engine, py, torch_version, torch_cuda, no_torch):
    """Every row of the table, as the command it runs and how many times."""
    wanted, engine_args = args.wanted, args.engine_argv
    torch_wanted = [v for v in wanted if v != "engine"]
    common_engine = ["--data", data_dir, "--threads", str(threads), "--seed", str(args.seed), "--no-progress",
                     "--epochs-teacher", str(args.epochs_teacher), "--epochs-distill", str(args.epochs_distill)]
    common_torch = ["--data", data_dir, "--threads", str(threads), "--seed", str(args.seed)]
    if args.divergence != "kl":  # the notebook's KL is both programs' default: its commands stay as they were
        common_engine += ["--divergence", args.divergence]
        common_torch += ["--divergence", args.divergence]
    specs = []
    for dev in devices:
        if "engine" in wanted:
            specs.append(Spec("engine", dev, [engine, "--device", dev, *common_engine, *engine_args], "engine",
                              args.repeats))
        if not torch_wanted:
            continue
        cannot_run = no_torch or (f"{py} has torch {torch_version} without CUDA"
                                  if dev == "cuda" and not torch_cuda else None)
        first_torch_row = len(specs)
        base = [py or "python3", TORCH_SCRIPT, "--device", dev, *common_torch]
        full = ["--epochs-teacher", str(args.epochs_teacher), "--epochs-distill", str(args.epochs_distill)]
        if "faithful" in torch_wanted and args.faithful_repeats > 0:
            short = shortened_epochs(args.faithful_epochs, args.epochs_teacher, args.epochs_distill)
            if short:
                specs.append(Spec("torch faithful", dev,
                                  base + ["--variant", "faithful", "--epochs-teacher", str(short[0]),
                                          "--epochs-distill", str(short[1])],
                                  "torch", args.faithful_repeats, (args.epochs_teacher, args.epochs_distill)))
            else:
                specs.append(Spec("torch faithful", dev, base + ["--variant", "faithful", *full], "torch",
                                  args.faithful_repeats))
        if "fast" in torch_wanted:
            specs.append(Spec("torch fast", dev, base + ["--variant", "fast", *full], "torch", args.repeats))
        if dev == "cuda" and "fast+cuda-graphs" in torch_wanted:
            specs.append(Spec("torch fast+cuda-graphs", dev, base + ["--variant", "fast", "--cuda-graphs", *full],
                              "torch", args.repeats))
        if "fast+compile" in torch_wanted and (dev == "cuda" or args.cpu_compile):
            specs.append(Spec("torch fast+compile", dev, base + ["--variant", "fast", "--compile", *full], "torch",
                              args.repeats))
        if cannot_run:
            for s in specs[first_torch_row:]:
                s.repeats, s.failures = 0, [cannot_run]
    return specs


def make_outdir(args):
    """--outdir, or a new temp directory; made only once runs start (not for --dry-run or refused flags)."""
    try:
        if args.outdir:
            outdir = os.path.abspath(args.outdir)
            os.makedirs(outdir, exist_ok=True)
            return outdir
        return tempfile.mkdtemp(prefix="compare_")
    except OSError as e:
        die(f"--outdir {shown(args.outdir or tempfile.gettempdir())}: cannot make it ({e.strerror or e})")


class JsonReport:
    """The report to --json, written once at least one run has succeeded (an existing file is not replaced
    by a report of failures only); atomically, so a kill never leaves half a file."""

    def __init__(self, args, specs, header):
        self.path, self.specs, self.header = args.json, specs, header
        self.failed = []  # the messages of failed writes since the last good one

    def write(self, rows, complete):
        if not self.path or not any(s.runs for s in self.specs):
            return False
        try:
            bench_io.write_json_atomically(self.path, {**self.header, "complete": complete, "rows": rows,
                                                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as e:
            self.failed.append(f"--json {shown(self.path)}: cannot write it ({e.strerror or e})")
            if len(self.failed) == 1:
                note(f"warning: {self.failed[-1]}")
            return False
        self.failed.clear()
        return True


class Stopped(Exception):
    pass


def run_round_robin(specs, outdir, timeout, report):
    """Repeat r of every row before repeat r + 1 of any, so drift hits every row alike. Returns whether it
    ran to the end (False: stopped by SIGTERM or Ctrl-C; the runs finished so far are kept)."""
    def on_signal(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for r in range(max(s.repeats for s in specs)):
            for s in specs:
                if r < s.repeats:
                    run_once(s, outdir, r + 1, timeout)
                    report.write(with_ratios([summarize(x) for x in specs]), False)  # partial results survive a kill
    except Stopped as e:
        note(f"stopped ({e}): the table holds the runs finished so far")
        return False
    return True


def refuse_json_over_inputs_or_runs(args, data_dir, specs):
    """--json naming an MNIST file the runs read, or a run's own report or log in --outdir (the
    table, written after each run, would replace it): refused before anything runs."""
    why = bench_io.json_over_data(args.json, data_dir, "the runs read")
    if why:
        die(why)
    if not args.json or not args.outdir:
        return
    outdir = os.path.abspath(args.outdir)
    for s in specs:
        for r in range(1, s.repeats + 1):
            for f in run_files(s, outdir, r):
                if bench_io.same_file(args.json, f):
                    die(f"--json {shown(args.json)} is run {r} of {s.name}'s own file in --outdir: the table would "
                        "overwrite it")


def main():
    bench_io.stop_quietly_on_sigint("compare.py", "before any run (nothing written)")
    args = parse_args()
    try:
        data_dir = bench_io.locate_mnist(args.data, REPO)
        if not args.dry_run:
            bench_io.check_mnist_files(data_dir)  # damaged data: one line now, not a failed row per run
    except ValueError as e:
        die(str(e))
    threads = args.threads if args.threads > 0 else usable_cores()
    engine = os.path.abspath(args.engine)
    engine_ok = os.path.isfile(engine) and os.access(engine, os.X_OK)
    if "engine" in args.wanted and not engine_ok:
        die(f"no engine executable at {shown(engine)} (build it: cmake --build build; or pass --engine PATH, "
            "or leave it out with --variants)")
    if "engine" in args.wanted and engine_ok:
        refuse_engine_args_the_engine_refuses(engine, args.engine_argv)
    py, torch_version, torch_cuda, no_torch = find_torch(args, [v for v in args.wanted if v != "engine"])
    gpus = nvidia_gpus()
    devices = devices_to_run(args, gpus, torch_cuda)
    machine = {"cpu": cpu_model(), "cores": usable_cores(),
               "gpu": ", ".join(f"{g[0]} (driver {g[1]}, {g[2]})" if len(g) >= 3 else g[0] for g in gpus) or None,
               "torch": torch_version, "python": py, "engine": engine if engine_ok else None,
               "engine_build": engine_build_of(engine) if engine_ok else None,
               "engine_args": args.engine_argv, "divergence": args.divergence,
               "hostname": os.uname().nodename}
    specs = plan_specs(args, devices, threads, data_dir, engine, py, torch_version, torch_cuda, no_torch)
    refuse_json_over_inputs_or_runs(args, data_dir, specs)
    if not any(s.repeats for s in specs):
        die("nothing to run" + (f": {specs[0].failures[0]}" if specs else ""))
    if no_torch:  # said once the flags are known to be good: a refusal stays one line
        note(f"{no_torch}: the torch rows fail")

    note(f"machine: {machine['cpu']} ({machine['cores']} cores)" + (f", GPU {machine['gpu']}" if machine["gpu"] else "")
         + f"; devices {devices}; outdir {shown(args.outdir) if args.outdir else '(a new temp directory)'}")
    if args.dry_run:
        for s in specs:
            print(f"{s.name:<24} {s.device:<5} " +
                  (f"x{s.repeats}: {' '.join(s.cmd)} --json ..." if s.repeats else f"cannot run: {s.failures[0]}"))
        return 0

    outdir = make_outdir(args)
    note(f"per-run reports and logs in {outdir}")
    report = JsonReport(args, specs, {
        "machine": machine, "threads": threads, "data": data_dir, "seed": args.seed,
        "epochs_teacher": args.epochs_teacher, "epochs_distill": args.epochs_distill, "repeats": args.repeats,
        "faithful_epochs": args.faithful_epochs or None})
    t0 = time.perf_counter()
    complete = run_round_robin(specs, outdir, args.timeout, report)
    rows = with_ratios([summarize(s) for s in specs])
    print_table(machine, rows, threads)
    print(f"\n(compare.py took {time.perf_counter() - t0:.0f} s; per-run reports and logs in {outdir})"
          + ("" if complete else " — INCOMPLETE"))
    if args.json and not report.write(rows, complete):
        if report.failed:
            die(report.failed[-1])
        note(f"no run succeeded: --json {shown(args.json)} not written" +
             (" (the existing file is kept)" if os.path.exists(args.json) else ""))
    failed = [r for r in rows if not r.get("runs")]
    return 1 if failed or not complete else 0


if __name__ == "__main__":
    sys.exit(main())
