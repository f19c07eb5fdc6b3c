#!/usr/bin/env python3
"""bench/test_numbers.py — the numbers the benchmark tools print are the right ones.

bench/test_inputs.py checks that bad input is refused; this checks what good input gives: compare.py's
train seconds, µs/step and steady µs/step (each phase weighted by its steps), the extrapolation of a
shortened faithful run, medians over repeats (of an even count too), the ×eng ratios against the
engine on the same device, the columns of its table and the fields of its --json; which reports it
takes; scripts/ab_summary.py's medians and current ÷ baseline; parity.py's choice of reference (fp32
or fp64) per tensor, the reason its verdict gives and a NaN error failing it; bench_io's range ends,
its JSON reading (numbers past a float, deep nesting) and strict writing; and the order of
scripts/plot.py's sweep x axis. The expected values
are worked out by hand in each test. No torch, no numpy: the functions are imported and called
directly; compare.py's own run goes through a fake engine (a shell script), as in test_inputs.py.

    python3 bench/test_numbers.py -v            # or: ctest -R bench_numbers
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_io  # noqa: E402
import compare  # noqa: E402
import parity  # noqa: E402  (imports torch only in main())
from test_inputs import script, write_mnist  # noqa: E402


def load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ab_summary = load_script(os.path.join(REPO, "scripts", "ab_summary.py"), "ab_summary")
plot = load_script(os.path.join(REPO, "scripts", "plot.py"), "plot")  # matplotlib is imported only by its main()


def report(**extra):
    """The part of the app's --json report compare.py reads: 2 s + 6 s of training over 1000 + 3000 steps."""
    r = {"seconds": {"teacher": 2.0, "distill_ghosts": 6.0, "eval": 0.5, "total": 10.0},
         "steps": {"teacher": 1000, "distill_ghosts": 3000},
         "teacher": {"test_acc": 0.9}, "student": {"test_acc": 0.5}}
    r.update(extra)
    return r


# ---------------------------------------------------------------------------------------------- compare.py


class TrainingNumbersTest(unittest.TestCase):
    def test_cpu_times_are_the_host_wall_of_both_phases_over_all_steps(self):
        train, gpu, us, steady, nsteps = compare.training_numbers(report(), "cpu")
        self.assertEqual((train, gpu, nsteps), (8.0, None, 4000))
        self.assertAlmostEqual(us, 1e6 * 8.0 / 4000)  # 2000 µs/step

    def test_cuda_us_per_step_is_gpu_time_of_the_phases_the_steps_count(self):
        # "training" also holds the all-logit arms' phase (the paper preset), whose steps are not
        # among the teacher's and the ghost arms': the two phases' own GPU time is what is divided.
        r = report(gpu_seconds={"training": 9.0, "teacher": 1.0, "distill_ghosts": 1.5, "distill_all_logits": 6.5})
        train, gpu, us, _, _ = compare.training_numbers(r, "cuda")
        self.assertEqual((train, gpu), (8.0, 2.5))
        self.assertAlmostEqual(us, 1e6 * 2.5 / 4000)
        self.assertEqual(compare.training_numbers(r, "cpu")[1], None)  # a cpu row has no GPU time

    def test_steady_weights_each_phase_by_its_warm_steps(self):
        r = report(us_per_step_steady={"teacher": 100.0, "distill_ghosts": 400.0},
                   steps_steady={"teacher": 300, "distill_ghosts": 100})
        self.assertAlmostEqual(compare.training_numbers(r, "cpu")[3], (100 * 300 + 400 * 100) / 400)  # 175, not 250
        # a phase of one epoch has no warm steps and no steady time: the other phase alone
        r = report(us_per_step_steady={"teacher": 100.0}, steps_steady={"teacher": 300, "distill_ghosts": 0})
        self.assertAlmostEqual(compare.training_numbers(r, "cpu")[3], 100.0)
        self.assertIsNone(compare.training_numbers(report(), "cpu")[3])


class ReportProblemTest(unittest.TestCase):
    def test_accepted(self):
        self.assertIsNone(compare.report_problem(report()))
        # --epochs-distill 0: a phase of no steps and no seconds is a report, not a broken one
        self.assertIsNone(compare.report_problem(report(seconds={"teacher": 1.0, "distill_ghosts": 0.0},
                                                        steps={"teacher": 10, "distill_ghosts": 0})))
        # the app with --epochs-distill 0 writes no distillation phase at all
        self.assertIsNone(compare.report_problem(report(seconds={"teacher": 1.0}, steps={"teacher": 10},
                                                        config={"epochs_teacher": 1, "epochs_distill": 0})))
        # JSON has no NaN: a NaN accuracy is written as null
        self.assertIsNone(compare.report_problem(report(teacher={"test_acc": None})))

    def test_refused(self):
        nan, inf = float("nan"), float("inf")
        for r, why in [(report(gpu_seconds={"training": nan}), "gpu_seconds"),
                       (report(us_per_step_steady={"teacher": inf}), "us_per_step_steady"),
                       (report(steps_steady={"teacher": nan}), "steps_steady"),
                       (report(student={"test_acc": inf}), "student"),
                       (report(steps={"teacher": -1, "distill_ghosts": 0}), "steps.teacher"),
                       # a missing phase stands for 0 only when the report's config says 0 epochs
                       (report(seconds={"teacher": 1.0}, steps={"teacher": 10}), "seconds.distill_ghosts"),
                       (report(seconds={"teacher": 1.0}, steps={"teacher": 10}, config={"epochs_distill": 2}),
                        "seconds.distill_ghosts"),
                       ({k: v for k, v in report().items() if k != "teacher"}, "no teacher accuracy")]:
            with self.subTest(why=why):
                problem = compare.report_problem(r)
                self.assertIsNotNone(problem)
                self.assertIn(why, problem)


class ExtrapolationTest(unittest.TestCase):
    """A faithful run of 2+1 epochs (two arms) scaled to 4+6."""

    def test_a_shortened_run_keeps_a_phase_shorter_than_e(self):
        # --faithful-epochs 1 of 5+5: 1+1; of 5+0: 1+0 (it used to distill 1 epoch the full run does not have);
        # 3 of 5+2: 3+2; nothing to shorten (E ≥ both, or 0: the full run) → None
        self.assertEqual(compare.shortened_epochs(1, 5, 5), (1, 1))
        self.assertEqual(compare.shortened_epochs(1, 5, 0), (1, 0))
        self.assertEqual(compare.shortened_epochs(3, 5, 2), (3, 2))
        self.assertIsNone(compare.shortened_epochs(5, 5, 5))
        self.assertIsNone(compare.shortened_epochs(0, 5, 5))

    def run_of(self, device="cpu"):
        r = report(seconds={"teacher": 2.0, "distill_ghosts": 3.0, "eval": 0.8, "total": 9.0},
                   steps={"teacher": 200, "distill_ghosts": 100},
                   config={"epochs_teacher": 2, "epochs_distill": 1, "cross_init": True},
                   gpu_seconds={"training": 4.5, "teacher": 1.0, "distill_ghosts": 3.5})
        spec = compare.Spec("torch faithful", device, [], "torch", 1, extrapolate_to=(4, 6))
        return compare.read_run(r, spec, 10.0, "x.json", "x.log")

    def test_times_scale_per_epoch_and_per_evaluation(self):
        run = self.run_of()
        self.assertAlmostEqual(run["train"], 2.0 / 2 * 4 + 3.0 / 1 * 6)  # 22
        # evaluations: reference + teacher per epoch + final teacher + 2 arms per distillation epoch
        self.assertEqual(compare.evals_done(None, 2, 1, 2), 1 + 2 + 1 + 2)
        # no distillation epochs: each arm's untrained copy is still evaluated once
        self.assertEqual(compare.evals_done(None, 2, 0, 2), 1 + 2 + 1 + 2)
        self.assertEqual(compare.evals_done(None, 2, 3, 2), 1 + 2 + 1 + 6)
        evals_full = 1 + 4 + 1 + 6 * 2
        self.assertAlmostEqual(run["wall"], 10.0 - 5.0 - 0.8 + 22.0 + 0.8 / 6 * evals_full)  # 28.6
        self.assertEqual(run["measured"], {"wall": 10.0, "train": 5.0, "epochs_teacher": 2, "epochs_distill": 1})
        self.assertEqual((run["acc_epochs"], run["steps"]), ("2+1", 300))
        self.assertIsNone(run["gpu_train"])

    def test_gpu_time_scales_per_phase(self):
        run = self.run_of("cuda")
        self.assertAlmostEqual(run["gpu_train"], 1.0 / 2 * 4 + 3.5 / 1 * 6)  # 23
        self.assertAlmostEqual(run["us_per_step"], 1e6 * 4.5 / 300)  # measured, not extrapolated


class SummaryTest(unittest.TestCase):
    def test_median_of_an_even_count_is_the_mean_of_the_middle_two(self):
        self.assertEqual(compare.med([4.0, 1.0, 3.0, 2.0]), 2.5)
        self.assertEqual(compare.med([0.0, 0.5, 0.6]), 0.5)  # a zero is a value; only None is missing
        self.assertEqual(compare.med([None, 3.0]), 3.0)
        self.assertIsNone(compare.med([None]))

    def test_each_column_is_the_median_of_its_own_field(self):
        spec = compare.Spec("torch fast", "cuda", [], "torch", 2)
        for i in (0, 1):
            spec.runs.append({"wall": 10.0 + i, "train": 5.0 + i, "gpu_train": 3.0 + i, "us_per_step": 100.0 + i,
                              "us_per_step_steady": 90.0 + i, "steps": 50,
                              "acc": {"teacher": 0.9 + i / 100, "student": 0.5}, "framework": "pytorch",
                              "device_name": "gpu", "graphs_failed": None})
        row = compare.summarize(spec)
        self.assertEqual((row["runs"], row["wall_s"], row["train_s"], row["gpu_train_s"], row["us_per_step"],
                          row["us_per_step_steady"]), (2, 10.5, 5.5, 3.5, 100.5, 90.5))
        self.assertEqual(row["acc"], {"reference": None, "teacher": 0.905, "student": 0.5, "cross_init": None})
        self.assertFalse(row["extrapolated"])
        self.assertNotIn("cuda_graphs_failed", row)

    def test_runs_counts_the_runs_that_gave_numbers(self):
        spec = compare.Spec("torch fast+cuda-graphs", "cuda", [], "torch", 3)
        for failed in (None, "capture failed"):  # the second run fell back to eager
            spec.runs.append({"wall": 1.0, "train": 1.0, "gpu_train": None, "us_per_step": 1.0,
                              "us_per_step_steady": None, "acc": {}, "framework": "pytorch", "device_name": None,
                              "graphs_failed": failed})
        spec.failures.append("exit 1: boom")
        row = compare.summarize(spec)
        self.assertEqual((row["runs"], row["failures"]), (2, ["exit 1: boom"]))
        self.assertEqual(row["cuda_graphs_failed"], ["capture failed"])

    def test_an_extrapolated_row_shows_the_full_run(self):
        spec = compare.Spec("torch faithful", "cpu", [], "torch", 1, extrapolate_to=(4, 6))
        spec.runs.append(ExtrapolationTest().run_of())
        row = compare.summarize(spec)
        self.assertAlmostEqual(row["wall_s"], 28.6)
        self.assertAlmostEqual(row["train_s"], 22.0)
        self.assertEqual((row["extrapolated"], row["acc_epochs"]), (True, "2+1"))


def table_row(variant, device, wall, train, us, steady, teacher, student, cross):
    return {"variant": variant, "device": device, "runs": 1, "wall_s": wall, "train_s": train, "gpu_train_s": None,
            "us_per_step": us, "us_per_step_steady": steady,
            "acc": {"reference": None, "teacher": teacher, "student": student, "cross_init": cross},
            "extrapolated": False, "framework": "x", "device_name": None, "failures": []}


class TableTest(unittest.TestCase):
    def test_columns_and_ratios_against_the_engine_on_the_same_device(self):
        rows = [table_row("engine", "cpu", 10.0, 4.0, 1000.0, 900.0, 0.9, 0.5, 0.1),
                table_row("torch fast", "cpu", 30.0, 2.0, 1234.0, 987.0, 0.9123, 0.4567, 0.1111),
                table_row("engine", "cuda", 5.0, 1.0, 50.0, 40.0, 0.9, 0.5, 0.1),
                table_row("torch fast", "cuda", 20.0, 3.0, 60.0, 55.0, 0.9, 0.5, 0.1)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            compare.print_table({"cpu": "test cpu", "cores": 2}, rows, 2)
        lines = {tuple(line.split()[:3]): line.split() for line in out.getvalue().splitlines()
                 if line.startswith(("engine", "torch"))}
        # variant, device, runs, wall s, train s, µs/step, steady, teacher, student, cross, wall×eng, train×eng
        self.assertEqual(lines[("torch", "fast", "cpu")][3:],
                         ["1", "30.0", "2.00", "1234", "987", "0.9123", "0.4567", "0.1111", "3.00", "0.50"])
        self.assertEqual(lines[("torch", "fast", "cuda")][-2:], ["4.00", "3.00"])  # not against the cpu engine
        self.assertEqual(lines[("engine", "cpu", "1")][-2:], ["1.00", "1.00"])
        # the same ratios are in the rows --json writes
        self.assertEqual([(r["wall_x_engine"], r["train_x_engine"]) for r in rows],
                         [(1.0, 1.0), (3.0, 0.5), (1.0, 1.0), (4.0, 3.0)])

    def test_an_extrapolated_row_is_marked_and_a_zero_engine_time_gives_no_ratio(self):
        faithful = table_row("torch faithful", "cpu", 30.0, 2.0, 1234.0, None, 0.9123, 0.4567, 0.1111)
        faithful.update(extrapolated=True, acc_epochs="1+1")
        rows = [table_row("engine", "cpu", 10.0, 0.0, 1000.0, None, 0.9, 0.5, 0.1), faithful]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            compare.print_table({"cpu": "test cpu", "cores": 2}, rows, 2)
        line = next(x for x in out.getvalue().splitlines() if x.startswith("torch faithful *"))
        self.assertEqual(line.split()[3:], ["cpu", "1", "30.0", "2.00", "1234", "—", "0.9123†", "0.4567†",
                                            "0.1111†", "3.00", "—"])
        self.assertIn("* torch faithful on cpu: extrapolated — ran 1+1 epochs", out.getvalue())


class CompareRunTest(unittest.TestCase):
    """compare.py end to end on a fake engine whose two runs report different times."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bench_numbers_")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_json_holds_the_medians_of_the_repeats(self):
        d = self.dir
        # run n (1, 2) reports teacher n² s: 1 and 4 → train 3 and 6 s over 20 steps; --version is
        # not a run: it names the build, which the JSON keeps
        engine = script(os.path.join(d, "engine.sh"),
                        '[ "$1" = --version ] && { echo "subliminal 0123456789ab-dirty"; echo "  build: x"; exit 0; }\n'
                        f'n=$(( $(cat "{d}/count" 2>/dev/null || echo 0) + 1 )); echo $n > "{d}/count"\n'
                        'while [ $# -gt 0 ]; do [ "$1" = --json ] && echo "{\\"seconds\\": {\\"teacher\\": $((n*n)), '
                        '\\"distill_ghosts\\": 2}, \\"steps\\": {\\"teacher\\": 10, \\"distill_ghosts\\": 10}, '
                        '\\"teacher\\": {\\"test_acc\\": 0.$n}}" > "$2"; shift; done\n')
        out = os.path.join(d, "c.json")
        r = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), "--engine", engine, "--data",
                            write_mnist(os.path.join(d, "mnist")), "--device", "cpu", "--variants", "engine",
                            "--repeats", "2", "--outdir", os.path.join(d, "out"), "--json", out, "--seed", "7",
                            "--epochs-teacher", "3", "--epochs-distill", "4"],
                           cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TMPDIR": d, "PYTHONDONTWRITEBYTECODE": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual((report["repeats"], report["seed"], report["complete"]), (2, 7, True))
        self.assertEqual(report["machine"]["engine_build"], "0123456789ab-dirty")
        self.assertIn("Engine: build 0123456789ab-dirty", r.stdout)
        self.assertEqual((report["epochs_teacher"], report["epochs_distill"], report["faithful_epochs"]), (3, 4, None))
        row = report["rows"][0]
        self.assertEqual((row["variant"], row["runs"]), ("engine", 2))
        self.assertEqual(row["train_s"], (3.0 + 6.0) / 2)
        self.assertEqual(row["us_per_step"], 1e6 * (3.0 + 6.0) / 2 / 20)
        self.assertAlmostEqual(row["acc"]["teacher"], 0.15)
        self.assertEqual([run["train"] for run in row["per_run"]], [3.0, 6.0])
        self.assertEqual((row["wall_x_engine"], row["train_x_engine"]), (1.0, 1.0))  # the engine against itself


# ---------------------------------------------------------------------------------------------- ab_summary.py


def app_report(us, acc=0.9, gpu=2.0, steady=True):
    r = {"seconds": {"total": 1.5}, "gpu_seconds": {"training": gpu, "teacher": 0.5},
         "us_per_step": {"teacher": us, "distill_ghosts": 2 * us}, "teacher": {"test_acc": acc}}
    if steady:  # reports from before the app wrote it have none
        r["us_per_step_steady"] = {"teacher": us / 2}
    return r


class AbSummaryTest(unittest.TestCase):
    def summary(self, base, cur):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rows = {}
            with mock_load(base + cur):
                self.assertEqual(ab_summary.main([f"b{i}" for i in range(len(base))] + ["--"]
                                                 + [f"b{i + len(base)}" for i in range(len(cur))]), 0)
        for line in out.getvalue().splitlines()[2:]:
            name, rest = line[:34].strip(), line[34:].split()
            rows[name] = rest
        return out.getvalue().splitlines()[0], rows

    def test_medians_and_current_over_baseline(self):
        base = [app_report(us, acc=0.9) for us in (100.0, 400.0, 200.0, 300.0)]
        cur = [app_report(500.0, acc=0.8, gpu=3.0), app_report(500.0, acc=0.8, gpu=3.0)]
        head, rows = self.summary(base, cur)
        self.assertIn("medians of 4 baseline and 2 current runs", head)
        self.assertEqual(rows["µs/step teacher"], ["250.0000", "500.0000", "2.000"])  # median of four: 250
        self.assertEqual(rows["µs/step distill_ghosts"], ["500.0000", "1000.0000", "2.000"])
        self.assertEqual(rows["GPU s in training"], ["2.0000", "3.0000", "1.500"])
        self.assertEqual(rows["accuracy teacher"], ["0.9000", "0.8000"])  # accuracies get no ratio
        self.assertEqual(rows["µs/step teacher, steady"], ["125.0000", "250.0000", "2.000"])

    def test_a_baseline_without_steady_times_shows_a_dash(self):
        head, rows = self.summary([app_report(100.0, steady=False)], [app_report(100.0)])
        self.assertEqual(rows["µs/step teacher, steady"], ["—", "50.0000"])

    def test_a_null_accuracy_is_a_nan_not_a_bad_report(self):
        self.assertIsNone(ab_summary.report_problem(app_report(100.0, acc=None)))
        self.assertIn("nan", str(ab_summary.rows([app_report(100.0, acc=None)])["accuracy teacher"]))


@contextlib.contextmanager
def mock_load(reports):
    """ab_summary.load reading `reports` by their names b0, b1, … instead of files."""
    real = ab_summary.load
    ab_summary.load = lambda paths: [reports[int(p[1:])] for p in paths]
    try:
        yield
    finally:
        ab_summary.load = real


# ---------------------------------------------------------------------------------------------- parity.py


class ParityJudgeTest(unittest.TestCase):
    TOL = 1e-4

    def test_fp32_is_the_reference_while_the_engine_agrees_with_it(self):
        # torch fp32 is further from fp64 than the engine, but the engine is within the tolerance of fp32
        self.assertEqual(parity.judge(5e-5, 1e-6, 3e-4, self.TOL), ("fp32", 5e-5))
        # at the tolerance exactly it still passes against fp32, whatever the engine's distance from fp64
        self.assertEqual(parity.judge(self.TOL, 2e-4, 3e-4, self.TOL), ("fp32", self.TOL))

    def test_fp64_is_the_reference_where_torch_fp32_rounds_more_than_the_engine(self):
        self.assertEqual(parity.judge(2e-4, 5e-5, 3e-4, self.TOL), ("fp64", 5e-5))

    def test_an_engine_further_from_fp64_than_torch_is_judged_against_fp32(self):
        self.assertEqual(parity.judge(2e-4, 3e-4, 1e-4, self.TOL), ("fp32", 2e-4))
        self.assertEqual(parity.judge(2e-4, 3e-4, 3e-4, self.TOL), ("fp32", 2e-4))  # a tie is not "further"

    def test_non_finite_errors_fail(self):
        nan = float("nan")
        for e32, e64 in [(nan, nan), (nan, 1e-6), (1e-6, float("inf"))]:
            with self.subTest(e32=e32, e64=e64):
                self.assertEqual(parity.judge(e32, e64, 1e-6, self.TOL)[1], float("inf"))

    def test_the_verdict_says_why_a_tensor_was_judged_against_fp64(self):
        # kl_loss: engine 7e-5 from torch fp32, 1e-7 from fp64; torch fp32 7e-5 from fp64; tolerance 5e-5
        tol = 5e-5
        rows = [{"tensor": "loss", "judged_against": "fp32", "error": 1e-7},
                {"tensor": "kl_loss", "judged_against": parity.judge(7e-5, 1e-7, 7e-5, tol)[0], "error": 1e-7}]
        ok, lines = parity.verdict(rows, 7e-5, 1e-7, tol, [])
        self.assertTrue(ok)
        self.assertEqual(lines[0], "worst engine vs torch fp32: 7.00e-05; worst judged error: 1.00e-07 "
                                   "(tolerance 5e-05) -> PASS")
        # the reason given is judge()'s rule: over the tolerance against fp32 AND torch fp32 the further from
        # fp64 — not "or the engine is" (an engine further from fp64 than torch is judged against fp32)
        self.assertEqual(lines[1:], ["  judged against fp64 (engine vs torch fp32 is over the tolerance, and torch "
                                     "fp32 is further from fp64 than the engine is): kl_loss"])
        ok, lines = parity.verdict(rows[:1], 2e-4, 2e-4, 1e-4, ["engine file lacks kl_loss"])
        self.assertFalse(ok)
        self.assertEqual(lines[1:], ["  problem: engine file lacks kl_loss"])

    def test_a_nan_error_is_the_worst_and_fails(self):
        nan = float("nan")
        self.assertEqual(max(0.0, nan), 0.0)  # why worse() exists: max() passes over a NaN that comes second
        for a, b in [(0.0, nan), (nan, 0.0), (nan, 1e-3), (1e-3, nan)]:
            with self.subTest(a=a, b=b):
                self.assertTrue(math.isnan(parity.worse(a, b)))
        self.assertEqual(parity.worse(1e-6, 2e-6), 2e-6)
        ok, lines = parity.verdict([], nan, 1e-7, 1e-4, [])
        self.assertFalse(ok)
        self.assertTrue(lines[0].startswith("worst engine vs torch fp32: nan;"), lines[0])
        self.assertTrue(lines[0].endswith("-> FAIL"), lines[0])


# ---------------------------------------------------------------------------------------------- bench_io.py


class JsonTest(unittest.TestCase):
    def test_numbers_beyond_a_float_and_deep_nesting_are_value_errors(self):
        for text, why in [("1" * 400, "an integer of 400 digits"), ("-" + "9" * 5000, "an integer of 5000 digits"),
                          ("[" * 100000 + "]" * 100000, "nested too deeply")]:
            with self.subTest(text=text[:10]), self.assertRaisesRegex(ValueError, why):
                bench_io.parse_json(text)
        self.assertEqual(bench_io.parse_json('{"n": [%s, 1.5]}' % ("9" * 300)), {"n": [int("9" * 300), 1.5]})
        self.assertEqual([bench_io.is_finite_number(v) for v in (1, 2.5, 10**400, True, float("nan"), "1")],
                         [True, True, False, False, False, False])

    def test_reports_are_written_strict(self):
        d = tempfile.mkdtemp(prefix="bench_numbers_")
        self.addCleanup(shutil.rmtree, d, True)
        out = os.path.join(d, "r.json")
        bench_io.write_json_atomically(out, {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": (2,)})
        with open(out) as f:
            text = f.read()
        self.assertEqual(json.loads(text), {"a": None, "b": [None, None, 1.5], "c": [2]})
        self.assertNotIn("NaN", text)
        self.assertNotIn("Infinity", text)


class SweepAxisTest(unittest.TestCase):
    def test_numbers_in_numeric_order_then_lists_by_depth_then_text(self):
        self.assertEqual(plot.x_categories(["3e-3", "1e-4", "3e-3", 0.01]), ["1e-4", "3e-3", "0.01"])
        self.assertEqual(plot.x_categories(["64", "32,32", "16", "64,16"]), ["16", "64", "32,32", "64,16"])
        self.assertEqual(plot.x_categories(["b", "—", "2", "nan", "a"]), ["2", "a", "b", "nan", "—"])


class RangeEndsTest(unittest.TestCase):
    def test_the_largest_values_are_accepted(self):
        self.assertEqual(bench_io.threads_type(str(bench_io.MAX_THREADS)), bench_io.MAX_THREADS)
        self.assertEqual(bench_io.seed_type(str(2**64 - 1)), 2**64 - 1)
        self.assertEqual(bench_io.hidden_widths(f"1,{bench_io.MAX_WIDTH}"), [1, bench_io.MAX_WIDTH])
        self.assertEqual(bench_io.epochs_type("0"), 0)


if __name__ == "__main__":
    unittest.main()
