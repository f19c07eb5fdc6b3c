#!/usr/bin/env python3
"""bench/test_inputs.py — bad input to the Python benchmark tools is refused the project's way.

Runs bench/compare.py, bench/torch_subliminal.py, bench/parity.py, scripts/plot.py and
scripts/ab_summary.py as subprocesses (with this python) on bad flags, paths, files and
environment variables, and checks: exit status 2 (parity.py: 3 for an engine that cannot produce
its batch), no Python traceback, exactly one non-empty line on stderr naming the flag or file (for
argparse's own usage errors: its last line names the flag), and no output or temporary file left
behind or clobbered (each test runs in a fresh folder that is also the tools' $TMPDIR, compared
before and after). The data are tiny IDX files the tests write; engines are small shell scripts.
scripts/fetch_mnist.sh, gpu_check.sh and setup.sh are run the same way with stand-ins on PATH (no
download, install, build or GPU): their refusals, and setup.sh's paths through a failed install and
an unset HOME, from a copy beside stand-in scripts.

Nothing trains for more than a moment: the bad inputs are refused before any. Cases that need torch
(the data checks of torch_subliminal.py and parity.py, which import it first, and one short real
run) are skipped, with the reason, when this python cannot import torch; the rest runs anywhere
(compare.py, plot.py and ab_summary.py need no torch; torch_subliminal.py and parity.py check their
flags and paths before importing it).

    python3 bench/test_inputs.py -v            # or: python3 -m unittest -v bench.test_inputs
    ctest -R bench_inputs                      # from a build directory
"""
import contextlib
import gzip
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
COMPARE = os.path.join(REPO, "bench", "compare.py")
TORCH_SCRIPT = os.path.join(REPO, "bench", "torch_subliminal.py")
PARITY = os.path.join(REPO, "bench", "parity.py")
PLOT = os.path.join(REPO, "scripts", "plot.py")
AB = os.path.join(REPO, "scripts", "ab_summary.py")
FETCH = os.path.join(REPO, "scripts", "fetch_mnist.sh")
GPU_CHECK = os.path.join(REPO, "scripts", "gpu_check.sh")
SETUP = os.path.join(REPO, "scripts", "setup.sh")

# JSON that json.loads takes but that crashed the tools: a number past a float's range (OverflowError
# where it meets float arithmetic) and nesting past the recursion limit (RecursionError).
HUGE_INT = "1" * 400
DEEP_JSON = "[" * 100000 + "]" * 100000


@contextlib.contextmanager
def _quiet_stderr():
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        yield


_probed = {}


def module_missing(name):
    """None when this python imports `name`, else why not (cached)."""
    if name not in _probed:
        try:
            with _quiet_stderr():
                __import__(name)
            _probed[name] = None
        except Exception as e:  # noqa: BLE001 — any failure to import is a reason to skip
            _probed[name] = f"{type(e).__name__}: {e}"
    return _probed[name]


def needs(name):
    """Skips the test, saying why, when this python cannot import `name`."""
    why = module_missing(name)
    if why:
        raise unittest.SkipTest(f"{PY} cannot import {name} ({why})")


# ---------------------------------------------------------------------------------------------- files


def idx(dims, payload=None):
    """An IDX file of unsigned bytes: magic, dims, payload (zeros by default)."""
    count = 1
    for d in dims:
        count *= d
    head = struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    return head + (bytes(count) if payload is None else payload)


def write_mnist(directory, n_train=8, n_test=4, gz=True):
    """A tiny MNIST in `directory`: n_train/n_test images of 28×28, labels 0..9 in turn."""
    os.makedirs(directory, exist_ok=True)
    files = {"train-images-idx3-ubyte": idx((n_train, 28, 28), bytes(range(256)) * (n_train * 784 // 256 + 1)),
             "train-labels-idx1-ubyte": idx((n_train,), bytes(i % 10 for i in range(n_train))),
             "t10k-images-idx3-ubyte": idx((n_test, 28, 28)),
             "t10k-labels-idx1-ubyte": idx((n_test,), bytes(i % 10 for i in range(n_test)))}
    for name, data in files.items():
        if name.endswith("images-idx3-ubyte"):
            count = (n_train if name.startswith("train") else n_test) * 784
            data = data[:16 + count]
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
    return directory


def safetensors(path, header, data=b""):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return path


def safetensors_arrays(path, arrays):
    """A safetensors file of float32 tensors {name: numpy array}, as the app's --save-init writes."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        raw = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    return safetensors(path, header, b"".join(blobs))


def mlp_init(sizes, scale=1.0, seed=0):
    """{name: array} of an MLP's parameters (bench_io.mlp_shapes' names), uniform in ±0.05·scale."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        out[f"net.{2 * i}.weight"] = rng.uniform(-0.05, 0.05, (d_out, d_in)) * scale
        out[f"net.{2 * i}.bias"] = rng.uniform(-0.05, 0.05, (d_out,)) * scale
    return out


def strict_json(path):
    """The JSON in `path`, read as a strict parser would: NaN and Infinity tokens are an error."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def script(path, body):
    """An executable shell script (a stand-in engine or python)."""
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def with_overrides(base, extra):
    """base's words less the flags `extra` gives again (and their values), then extra: the tools
    refuse a flag given twice, so a test that changes one of a base's flags replaces it."""
    again = {w.split("=", 1)[0] for w in extra if w.startswith("--")}
    out, i = [], 0
    while i < len(base):
        word = base[i]
        if word.split("=", 1)[0] in again:
            i += 1 if "=" in word or i + 1 == len(base) or base[i + 1].startswith("--") else 2
            continue
        out.append(word)
        i += 1
    return out + list(extra)


def tree(root):
    """{relative path: (size, mtime_ns)} of everything under root, folders included (by their
    presence: a writability probe made and removed in a folder moves its mtime and leaves
    nothing) — but for torch's own cache folder ($TMPDIR/torchinductor_$USER, made when
    torchvision imports torch._dynamo), which is torch's to keep, not a leftover of the tools."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith("torchinductor_")]
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (0, 0) if os.path.isdir(p) else (st.st_size, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------------------------------------- base


class ToolTest(unittest.TestCase):
    """A fresh folder per test, which is also the tools' $TMPDIR and working directory."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bench_inputs_")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.data = write_mnist(self.path("mnist"))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def run_tool(self, tool, *args, env=None, timeout=120):
        e = {k: v for k, v in os.environ.items() if k != "MNIST_DIR"}
        e.update({"TMPDIR": self.dir, "PYTHONDONTWRITEBYTECODE": "1"})
        e.update(env or {})
        return subprocess.run([PY, tool, *args], cwd=self.dir, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="replace", timeout=timeout)

    def interrupted(self, tool, *args, after=1.5):
        """The tool's result when Ctrl-C (SIGINT, to it alone) reaches it `after` seconds in."""
        e = {k: v for k, v in os.environ.items() if k != "MNIST_DIR"}
        e.update({"TMPDIR": self.dir, "PYTHONDONTWRITEBYTECODE": "1"})
        p = subprocess.Popen([PY, tool, *args], cwd=self.dir, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="replace")
        time.sleep(after)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    @contextlib.contextmanager
    def unchanged(self, ignore=()):
        """The test folder holds the same files, unmodified, afterwards (paths under `ignore` aside)."""
        before = tree(self.dir)
        yield
        after = tree(self.dir)

        def keep(t):
            return {k: v for k, v in t.items() if not any(k == i or k.startswith(i + os.sep) for i in ignore)}

        self.assertEqual(keep(after), keep(before), "files were left, removed or changed")

    def damaged_data(self):
        """{name: (directory, file named in the message, defect)} — each a tiny MNIST with one bad file."""
        cases = {}
        d = write_mnist(self.path("truncated"))
        p = os.path.join(d, "train-images-idx3-ubyte.gz")
        with open(p, "rb") as f:
            raw = f.read()
        with open(p, "wb") as f:
            f.write(raw[:len(raw) // 2])
        cases["truncated gzip"] = (d, "train-images-idx3-ubyte.gz", "truncated")
        d = write_mnist(self.path("notgz"))
        with open(os.path.join(d, "train-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(b"hello, not gzip\n")
        cases["not gzip"] = (d, "train-labels-idx1-ubyte.gz", "not a gzip file")
        d = write_mnist(self.path("short"), gz=False)
        with open(os.path.join(d, "t10k-labels-idx1-ubyte"), "wb") as f:
            f.write(idx((4,))[:-2])
        cases["short payload"] = (d, "t10k-labels-idx1-ubyte", "header says")
        d = write_mnist(self.path("label"), gz=False)
        with open(os.path.join(d, "t10k-labels-idx1-ubyte"), "wb") as f:
            f.write(idx((4,), bytes([0, 1, 2, 200])))
        cases["label out of range"] = (d, "t10k-labels-idx1-ubyte", "out of range")
        d = write_mnist(self.path("empty"), gz=False)
        open(os.path.join(d, "t10k-labels-idx1-ubyte"), "wb").close()
        cases["empty file"] = (d, "t10k-labels-idx1-ubyte", "empty (0 bytes)")
        d = write_mnist(self.path("trailing"))
        with open(os.path.join(d, "train-labels-idx1-ubyte.gz"), "ab") as f:
            f.write(b"appended, not gzip")
        cases["bytes after the gzip stream"] = (d, "train-labels-idx1-ubyte.gz", "bytes after its gzip stream")
        d = write_mnist(self.path("dirname"))
        os.mkdir(os.path.join(d, "train-labels-idx1-ubyte"))  # a folder at the raw name, the .gz beside it
        cases["a folder at a file's name"] = (d, "train-labels-idx1-ubyte", "not a regular file")
        return cases

    def describe(self, r):
        return f"\n--- exit {r.returncode}; stderr:\n{r.stderr}\n--- stdout (tail):\n{r.stdout[-800:]}"

    def assertRefused(self, r, *mentions, code=2):
        """Exit `code`, no traceback, exactly one non-empty stderr line, naming each of `mentions`."""
        self.assertEqual(r.returncode, code, self.describe(r))
        self.assertNotIn("Traceback", r.stderr, self.describe(r))
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, self.describe(r))
        for m in mentions:
            self.assertIn(m, lines[0], self.describe(r))

    def assertUsageError(self, r, flag):
        """A usage error (bench_io.ArgumentParser's): exit 2, no traceback, one stderr line naming
        the flag (no usage block)."""
        self.assertEqual(r.returncode, 2, self.describe(r))
        self.assertNotIn("Traceback", r.stderr, self.describe(r))
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, self.describe(r))
        self.assertIn("error:", lines[0], self.describe(r))
        self.assertIn(flag, lines[0], self.describe(r))

    def check_usage_errors(self, tool, base, cases):
        """Each (flag, value) of `cases` after `base`: an argparse error naming the flag, nothing written."""
        for flag, value in cases:
            with self.subTest(flag=flag, value=value), self.unchanged():
                self.assertUsageError(self.run_tool(tool, *with_overrides(base, [flag, value])), flag)


class UsageTest(ToolTest):
    """What every tool's flag parser (bench_io.ArgumentParser) does with a bad or repeated flag."""

    def test_usage_errors_and_repeated_flags_are_one_line(self):
        # argparse prints its usage block before the error, and lets a repeated flag's last value win
        for tool, args, flag in [(COMPARE, ["--repeats", "2", "--repeats", "3"], "--repeats is given twice"),
                                 (COMPARE, ["--engine=a", "--engine", "b"], "--engine is given twice"),
                                 (TORCH_SCRIPT, ["--lr", "1e-3", "--lr=2e-3"], "--lr is given twice"),
                                 (PARITY, ["--torch-only", "--torch-only"], "--torch-only is given twice"),
                                 (PLOT, ["x.json", "--out", "a.png", "--out", "b.png"], "--out is given twice"),
                                 (PARITY, ["--tolerance", "nan"], "--tolerance"),
                                 (COMPARE, ["--bogus"], "--bogus")]:
            with self.subTest(tool=os.path.basename(tool), args=args), self.unchanged():
                self.assertUsageError(self.run_tool(tool, *args), flag)


# ---------------------------------------------------------------------------------------------- compare.py


class CompareTest(ToolTest):
    def engine(self, body):
        return script(self.path("engine.sh"), body)

    def base(self, *extra):
        return with_overrides(["--engine", self.fake_engine, "--data", self.data, "--device", "cpu", "--repeats", "1",
                               "--variants", "engine"], extra)

    def setUp(self):
        super().setUp()
        self.fake_engine = self.engine("exit 1\n")

    def test_bad_numbers_and_paths_are_usage_errors(self):
        os.mkdir(self.path("jdir"))
        with open(self.path("kept.json"), "w") as f:
            f.write("{}\n")
        os.chmod(self.path("kept.json"), 0o444)  # read-only: refused up front (as root too), kept
        self.check_usage_errors(COMPARE, self.base(), [
            ("--json", self.path("nodir", "c.json")), ("--json", self.path("jdir")), ("--json", self.path("jdir") + "/"),
            ("--json", self.path("kept.json")),
            ("--epochs-teacher", "-1"), ("--epochs-distill", "x"), ("--timeout", "0"), ("--timeout", "-5"),
            ("--threads", "-1"), ("--threads", "100000"), ("--repeats", "0"), ("--faithful-repeats", "-1"),
            ("--seed", "-3"), ("--seed", "1e23")])

    def test_bad_lists_and_dirs_are_one_line(self):
        with open(self.path("afile"), "w") as f:
            f.write("x")
        os.mkdir(self.path("runs"))
        for args, mentions in [
                (["--variants", ","], ["--variants"]), (["--variants", "engine,bogus"], ["--variants", "bogus"]),
                (["--outdir", self.path("afile")], ["--outdir", "not a directory"]),
                (["--outdir", self.path("afile", "sub")], ["--outdir", "not a directory"]),
                (["--engine-args", '"x'], ["--engine-args"]),
                (["--engine-args", "--seed 3"], ["--engine-args", "--seed is set by compare.py"]),
                (["--divergence", "js", "--epochs-distill", "0"], ["--divergence js and --epochs-distill 0"]),
                (["--engine-args", "--json=x.json"], ["--engine-args", "--json is set by compare.py"]),
                (["--engine", self.path("no-engine")], ["no engine executable", "no-engine"]),
                (["--data", self.path("nowhere")], ["--data", "no such directory"]),
                # a --json that is a file the runs read, or a run's own report in --outdir
                (["--json", os.path.join(self.data, "train-labels-idx1-ubyte.gz")],
                 ["--json", "a file the runs read"]),
                (["--outdir", self.path("runs"), "--json", self.path("runs", "engine-cpu-1.json")],
                 ["--json", "run 1 of engine's own file in --outdir"])]:
            with self.subTest(args=args), self.unchanged():
                self.assertRefused(self.run_tool(COMPARE, *self.base(*args)), *mentions)

    def test_engine_flags_that_change_the_experiment_need_the_engine_alone(self):
        # Beside the PyTorch rows, which run the notebook's experiment, the engine's row must run it too.
        for flags in ("--lr 1e-3", "--hidden=128", "--preset paper"):
            with self.subTest(flags=flags), self.unchanged():
                r = self.run_tool(COMPARE, *self.base("--variants", "engine,fast", "--engine-args", flags, "--dry-run"))
                self.assertRefused(r, "--engine-args", flags.split()[0].split("=")[0] + " changes the experiment",
                                   "--variants engine")
        r = self.run_tool(COMPARE, *self.base("--engine-args", "--lr 1e-3 --gemm tiled", "--dry-run"))
        self.assertEqual(r.returncode, 0, self.describe(r))  # the engine alone may run another experiment
        self.assertIn("--lr 1e-3", r.stdout)
        # Without the engine they reach no run: noted as doing nothing, not refused (the fast row
        # itself may then have nothing to run it with, where no python has torch).
        r = self.run_tool(COMPARE, *self.base("--variants", "fast", "--engine-args", "--lr 1e-3", "--dry-run"))
        self.assertIn("--engine-args does nothing without the engine variant", r.stderr, self.describe(r))
        self.assertNotIn("changes the experiment", r.stderr, self.describe(r))

    def test_wrong_mnist_dir_is_an_error_not_a_fallback(self):
        os.mkdir(self.path("empty"))
        for value, why in [(self.path("typo"), "no such directory"), (self.path("empty"), "none of the four")]:
            with self.subTest(MNIST_DIR=value), self.unchanged():
                r = self.run_tool(COMPARE, "--engine", self.fake_engine, "--variants", "engine", "--device", "cpu",
                                  env={"MNIST_DIR": value})
                self.assertRefused(r, "$MNIST_DIR=", why, "unset MNIST_DIR")

    def test_dry_run_and_nothing_to_run_make_no_folders(self):
        with self.unchanged():
            r = self.run_tool(COMPARE, *self.base("--dry-run", "--engine-args", "--no-graphs"))  # a lone flag
            self.assertEqual(r.returncode, 0, self.describe(r))
            self.assertNotIn("Traceback", r.stderr)
            self.assertIn("--no-progress --epochs-teacher 5 --epochs-distill 5 --no-graphs --json", r.stdout)
        fake_python = script(self.path("python"), 'echo "2.0 0"\n')  # "torch 2.0 without CUDA"
        with self.unchanged():
            r = self.run_tool(COMPARE, "--data", self.data, "--device", "cpu", "--variants", "fast+cuda-graphs",
                              "--python", fake_python)
            self.assertEqual(r.returncode, 2, self.describe(r))
            self.assertNotIn("Traceback", r.stderr)
            self.assertIn("nothing to run", r.stderr.splitlines()[-1])

    def test_divergence_reaches_the_engine_and_the_fast_variants_not_the_faithful(self):
        fake_python = script(self.path("python"), 'echo "2.0 0"\n')  # "torch 2.0 without CUDA"
        with self.unchanged():
            r = self.run_tool(COMPARE, "--engine", self.fake_engine, "--data", self.data, "--device", "cpu",
                              "--python", fake_python, "--divergence", "js", "--dry-run")
            self.assertEqual(r.returncode, 0, self.describe(r))
            self.assertIn("--epochs-distill 5 --divergence js --json", r.stdout)
            self.assertIn("--divergence js --variant fast", r.stdout)
            self.assertNotIn("faithful", r.stdout)  # the notebook as written has no JS: left out, said so
            self.assertIn("the faithful variant (the notebook as written, KL only) is left out", r.stderr)
        with self.unchanged():  # asked for by name, it is refused
            self.assertRefused(self.run_tool(COMPARE, *self.base("--variants", "engine,faithful", "--divergence", "js")),
                               "--divergence js", "faithful")
        with self.unchanged():  # the default's commands are as they were
            r = self.run_tool(COMPARE, *self.base("--dry-run"))
            self.assertNotIn("--divergence", r.stdout)
        self.assertRefused(self.run_tool(COMPARE, *self.base("--engine-args", "--divergence js")),
                           "--divergence is set by compare.py")

    def test_engine_args_the_engine_refuses_are_one_line_before_any_run(self):
        # the engine reads its flags before answering --version: an unknown one is found at once,
        # not by every run failing on it
        self.fake_engine = self.engine('case "$*" in *--bogus*) echo \'subliminal: error: unknown flag "--bogus"\' >&2; '
                                       'exit 2;; esac\nexit 1\n')
        with self.unchanged():
            self.assertRefused(self.run_tool(COMPARE, *self.base("--engine-args", "--bogus")),
                               "--engine-args: the engine refuses them", 'unknown flag "--bogus"')

    def test_damaged_mnist_is_one_line_before_any_run(self):
        for name, (d, file, why) in self.damaged_data().items():
            with self.subTest(data=name), self.unchanged():
                self.assertRefused(self.run_tool(COMPARE, *self.base("--data", d)), file, why)

    def test_ctrl_c_stops_the_session_saying_so(self):
        # during a run: the session stops, keeping what finished (exit 1, as for SIGTERM)
        self.fake_engine = self.engine('case "$*" in *--version*) echo "subliminal test"; exit 0;; esac\nsleep 30\n')
        r = self.interrupted(COMPARE, *self.base("--outdir", self.path("out")))
        self.assertEqual(r.returncode, 1, self.describe(r))
        self.assertNotIn("Traceback", r.stderr, self.describe(r))
        self.assertIn("stopped (SIGINT): the table holds the runs finished so far", r.stderr, self.describe(r))
        # before any run (here while it asks the engine its --version): one line, exit 130
        self.fake_engine = self.engine("sleep 30\n")
        with self.unchanged():
            r = self.interrupted(COMPARE, *self.base())
        self.assertEqual(r.returncode, 130, self.describe(r))
        self.assertNotIn("Traceback", r.stderr, self.describe(r))
        self.assertIn("compare.py: interrupted: before any run", r.stderr.splitlines()[-1], self.describe(r))

    def test_failed_runs_do_not_replace_an_existing_json(self):
        old = self.path("report.json")
        with open(old, "w") as f:
            f.write('{"old": true}\n')
        def writes(text):
            return f'while [ $# -gt 0 ]; do [ "$1" = --json ] && echo \'{text}\' > "$2"; shift; done\n'

        for name, body, reason in [
                # a crash's last line (a traceback ends with the error) is the row's one-line reason
                ("failing", "echo boom >&2; echo 'RuntimeError: out of luck' >&2; exit 1\n",
                 "FAILED: exit 1: RuntimeError: out of luck"),
                ("silent", "exit 0\n", "FAILED: exit 0 without writing"),
                ("malformed", writes("[1, 2]"), "not the app's --json report"),
                ("empty", writes("{}"), "seconds.teacher: expected a number"),
                ("nan", writes('{"seconds": {"teacher": NaN, "distill_ghosts": 1}, "steps": {"teacher": 1, '
                               '"distill_ghosts": 1}, "teacher": {"test_acc": 0.9}}'),
                 "seconds.teacher: expected a number")]:
            self.fake_engine = self.engine(body)
            with self.subTest(engine=name), self.unchanged(ignore=["out"]):
                r = self.run_tool(COMPARE, *self.base("--repeats", "2", "--json", old, "--outdir", self.path("out")))
                self.assertEqual(r.returncode, 1, self.describe(r))
                self.assertNotIn("Traceback", r.stderr, self.describe(r))
                self.assertIn(reason, r.stdout + r.stderr)
                self.assertIn("not written", r.stderr)
                with open(old) as f:
                    self.assertEqual(f.read(), '{"old": true}\n')
            shutil.rmtree(self.path("out"), True)

    def test_a_successful_run_writes_the_json(self):
        report = {"seconds": {"teacher": 1.0, "distill_ghosts": 2.0, "total": 3.5},
                  "steps": {"teacher": 10, "distill_ghosts": 10}, "teacher": {"test_acc": 0.9}}
        self.fake_engine = self.engine(
            f"while [ $# -gt 0 ]; do [ \"$1\" = --json ] && echo '{json.dumps(report)}' > \"$2\"; shift; done\n")
        out = self.path("report.json")
        # a relative --outdir is the caller's (the tool runs in self.dir), not the repository's
        r = self.run_tool(COMPARE, *self.base("--json", out, "--outdir", "out"))
        self.assertEqual(r.returncode, 0, self.describe(r))
        with open(out) as f:
            self.assertEqual(json.load(f)["rows"][0]["runs"], 1)
        self.assertTrue(os.path.isfile(self.path("out", "engine-cpu-1.json")))
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".tmp")], [])

    def test_refusals_without_torch_are_one_line(self):
        # no python with torch (a torch that cannot be imported, no python3 on PATH) and no nvidia-smi: the
        # refusal is the one line, without the note that the torch rows would fail
        fake = self.path("notorch", "torch")
        os.makedirs(fake)
        with open(os.path.join(fake, "__init__.py"), "w") as f:
            f.write("raise ImportError('no torch here')\n")
        os.mkdir(self.path("bin"))
        env = {"PYTHONPATH": self.path("notorch"), "PATH": self.path("bin")}
        for args, mentions in [(["--device", "cuda", "--variants", "engine,fast"], ["--device cuda", "no GPU found"]),
                               (["--device", "cpu", "--variants", "fast"], ["nothing to run", "no python with torch"])]:
            with self.subTest(args=args), self.unchanged(ignore=["notorch"]):
                r = self.run_tool(COMPARE, "--engine", self.fake_engine, "--data", self.data, *args, env=env)
                self.assertRefused(r, *mentions)

    def test_torch_rows_without_torch_are_failed_rows(self):
        for py in (PY, "python3", "/usr/bin/python3"):
            if subprocess.run([py, "-c", "import torch, numpy"], stderr=subprocess.DEVNULL).returncode == 0:
                self.skipTest(f"{py} imports torch here; the case needs a machine without it (as CI)")
        self.fake_engine = self.engine(
            'while [ $# -gt 0 ]; do [ "$1" = --json ] && echo \'{"seconds": {"teacher": 1, "distill_ghosts": 1}, '
            '"steps": {"teacher": 1, "distill_ghosts": 1}, "teacher": {"test_acc": 0.9}}\' > "$2"; shift; done\n')
        r = self.run_tool(COMPARE, "--engine", self.fake_engine, "--data", self.data, "--device", "cpu", "--repeats",
                          "1", "--variants", "engine,fast", "--outdir", "out", "--json", "c.json")
        self.assertEqual(r.returncode, 1, self.describe(r))
        self.assertIn("torch fast", r.stdout)
        self.assertIn("FAILED: no python with torch", r.stdout)
        with open(self.path("c.json")) as f:
            rows = json.load(f)["rows"]
        self.assertEqual([(row["variant"], row["runs"]) for row in rows], [("engine", 1), ("torch fast", 0)])


# ---------------------------------------------------------------------------------------------- torch_subliminal.py


class TorchSubliminalTest(ToolTest):
    BASE = ["--epochs-teacher", "0", "--epochs-distill", "0", "--hidden", "4", "--threads", "1", "--batch-size", "4"]

    def run_ts(self, *args, **kw):
        return self.run_tool(TORCH_SCRIPT, *with_overrides(["--data", self.data, *self.BASE], args), **kw)

    def test_bad_numbers_and_paths_are_usage_errors(self):  # refused before torch is imported
        os.mkdir(self.path("jdir"))
        self.check_usage_errors(TORCH_SCRIPT, ["--data", self.data], [
            ("--threads", "100000"), ("--threads", "-1"), ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"),
            ("--temperature", "nan"), ("--temperature", "inf"), ("--seed", "1e23"),
            ("--temperature", "1e-45"), ("--lr", "1e-39"), ("--lr", "3.5e38"), ("--lr", "1e38"),  # outside float32's normal range, as the app
            ("--seed", "100000000000000000000000"), ("--control-seed", "100000000000000000000000"),
            ("--hidden", "100000000"), ("--hidden", "abc"), ("--hidden", "8,,8"), ("--compile-mode", "bogus"),
            ("--lr", " 1e-3"), ("--lr", "1e-3 "), ("--seed", "1_000"), ("--hidden", "8, 8"),  # as the app reads them
            ("--seed", "+5"), ("--hidden", "+8"), ("--epochs-teacher", "\uff15"), ("--lr", "\uff13e-4"),
            ("--batch-size", "0"), ("--ghosts", "0"), ("--ghosts", "1"), ("--epochs-teacher", "-1"),
            ("--divergence", "jsd"), ("--control-seed", "0"),  # --seed's: the control would be a same-init student
            ("--json", self.path("jdir")), ("--json", self.path("nodir", "x.json")),
            ("--json", "/proc/x.json")])  # found when the run starts, not after it (root may "write" /proc)

    def test_missing_data_and_init_are_one_line(self):
        os.mkdir(self.path("jdir"))
        cases = [(["--data", self.path("nowhere")], ["--data", "no such directory"]),
                 (["--load-init", self.path("none.st")], ["--load-init", "no such file"]),
                 (["--load-init", self.path("jdir")], ["--load-init", "is a directory"]),
                 (["--data", self.data, "--json", os.path.join(self.data, "t10k-images-idx3-ubyte.gz")],
                  ["--json", "a file the run reads"])]
        for args, mentions in cases:
            with self.subTest(args=args), self.unchanged():
                self.assertRefused(self.run_tool(TORCH_SCRIPT, *args), *mentions)
        for value, why in [(self.path("typo"), "no such directory"), (self.path("jdir"), "none of the four")]:
            with self.subTest(MNIST_DIR=value), self.unchanged():
                self.assertRefused(self.run_tool(TORCH_SCRIPT, env={"MNIST_DIR": value}), "$MNIST_DIR=", why,
                                   "unset MNIST_DIR")

    def test_bad_init_files_are_one_line(self):  # read before torch is imported, with numpy
        needs("numpy")
        bad = {"list.st": ([1, 2], "not a safetensors file"),
               "nodtype.st": ({"net.0.weight": {"shape": [4, 784], "data_offsets": [0, 4]}}, "no dtype"),
               "offsets.st": ({"net.0.weight": {"dtype": "F32", "shape": [4, 784], "data_offsets": "x"}},
                              "data_offsets"),
               "names.st": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "do --hidden and --ghosts")}
        for name, (header, why) in bad.items():
            safetensors(self.path(name), header, bytes(4))
        with open(self.path("text.st"), "w") as f:
            f.write("not a safetensors file at all\n")
        bad["text.st"] = (None, "not a safetensors file")
        entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
        twice = ('{"net.0.weight": %s, "net.0.weight": %s}' % (entry, entry)).encode()
        with open(self.path("twice.st"), "wb") as f:  # json keeps the last, another reader the first
            f.write(struct.pack("<Q", len(twice)) + twice + bytes(4))
        bad["twice.st"] = (None, 'its header names "net.0.weight" twice')
        for name, (_, why) in bad.items():
            with self.subTest(file=name), self.unchanged():
                self.assertRefused(self.run_ts("--load-init", self.path(name)), "--load-init", name, why)
        # The app's --save-init of two models: each tensor has a leading 2 (--hidden 4, 3 ghosts).
        header, offset = {}, 0
        for name, shape in [("net.0.weight", [2, 4, 784]), ("net.0.bias", [2, 4]), ("net.2.weight", [2, 13, 4]),
                            ("net.2.bias", [2, 13])]:
            size = 4 * math.prod(shape)
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        safetensors(self.path("two.st"), header, bytes(offset))
        for name in header:  # one model's shapes, an Inf in the last tensor
            header[name]["shape"] = header[name]["shape"][1:]
            header[name]["data_offsets"] = [o // 2 for o in header[name]["data_offsets"]]
        safetensors(self.path("inf.st"), header, bytes(offset // 2 - 4) + struct.pack("<f", math.inf))
        os.mkfifo(self.path("fifo.st"))
        for name, why in [("inf.st", "net.2.bias holds a non-finite value (inf at flat index 12)"),
                          ("fifo.st", "not a regular file")]:
            with self.subTest(file=name), self.unchanged():
                self.assertRefused(self.run_ts("--load-init", self.path(name)), "--load-init", name, why)
        with self.subTest(file="two.st"), self.unchanged():
            self.assertRefused(self.run_ts("--load-init", self.path("two.st")), "--load-init", "two.st",
                               "holds the init of 2 models (net.0.weight is (2, 4, 784))", "--models 1")
        with self.subTest(case="--json is the --load-init file"), self.unchanged():
            self.assertRefused(self.run_ts("--load-init", self.path("list.st"), "--json", self.path("list.st")),
                               "--json", "--load-init")

    def test_damaged_mnist_files_are_one_line(self):
        needs("torch")
        cases = self.damaged_data()
        for name, (d, file, why) in cases.items():
            for variant in ("fast", "faithful") if name in ("short payload", "truncated gzip") else ("fast",):
                with self.subTest(data=name, variant=variant), self.unchanged():
                    r = self.run_tool(TORCH_SCRIPT, "--data", d, "--variant", variant, *self.BASE)
                    self.assertRefused(r, file, why)

    def test_a_nonfinite_loss_stops_with_exit_3_and_no_report(self):
        needs("torch")
        for variant in ("fast", "faithful"):
            with self.subTest(variant=variant), self.unchanged():
                r = self.run_ts("--variant", variant, "--epochs-teacher", "1", "--lr", "1e30", "--batch-size", "2",
                                "--json", self.path("nan.json"))
                self.assertRefused(r, "stopped: non-finite loss in teacher training, epoch 1", code=3)

    def test_js_distillation_is_the_fast_variants(self):
        # --divergence js (the app's): the notebook as written distils with KL, so faithful refuses it
        r = self.run_ts("--variant", "faithful", "--divergence", "js")
        self.assertUsageError(r, "--divergence js belongs to --variant fast")
        needs("torch")
        out = self.path("js.json")
        r = self.run_ts("--epochs-teacher", "1", "--epochs-distill", "1", "--divergence", "js", "--json", out)
        self.assertEqual(r.returncode, 0, self.describe(r))
        # The JS, orders of magnitude below the KL, in significant digits (as the app prints it)
        self.assertRegex(r.stdout, r"\[Student\] epoch=1 js=\d\.\d{3}e[-+]\d{2} ")
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["config"]["divergence"], "js")
        self.assertGreater(report["epochs"]["student"][0]["js"], 0.0)

    def test_a_batch_over_the_training_set_compiles(self):
        # one step of the remainder per epoch; the warm-up used to be made for a full batch no
        # epoch holds, and indexed past the shuffle (IndexError)
        needs("torch")
        r = self.run_ts("--epochs-teacher", "1", "--epochs-distill", "1", "--batch-size", "16", "--compile")
        self.assertEqual(r.returncode, 0, self.describe(r))

    def test_warm_ups_leave_the_random_stream_as_it_was(self):
        needs("torch")
        sys.path.insert(0, os.path.dirname(TORCH_SCRIPT))
        import torch
        import torch_subliminal as ts
        model = ts.MLP((ts.IMAGE_PIXELS, 4, 13))
        opt = torch.optim.Adam(model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        torch.manual_seed(3)
        with ts.preserved_state([model], opt, lambda: None):  # a warm-up step: noise, a shuffle, Adam
            torch.randperm(100)
            model(torch.rand(8, ts.IMAGE_PIXELS)).sum().backward()
            opt.step()
        after_warm_up = torch.rand(5)
        torch.manual_seed(3)
        self.assertTrue(torch.equal(after_warm_up, torch.rand(5)))
        self.assertTrue(all(torch.equal(a, b) for a, b in zip(before, model.parameters())))

    def test_ctrl_c_is_one_line_and_exit_130(self):
        needs("torch")
        old = self.path("old.json")
        with open(old, "w") as f:
            f.write("{}\n")
        r = self.interrupted(TORCH_SCRIPT, *with_overrides(["--data", self.data, *self.BASE],
                                                          ["--epochs-teacher", "100000", "--json", old]), after=4)
        self.assertEqual(r.returncode, 130, self.describe(r))
        self.assertNotIn("Traceback", r.stderr, self.describe(r))
        self.assertIn("interrupted: no report written", r.stderr.splitlines()[-1], self.describe(r))
        with open(old) as f:
            self.assertEqual(f.read(), "{}\n")

    def test_a_short_run_writes_its_report_and_notes_ignored_flags(self):
        needs("torch")
        out = self.path("out.json")
        r = self.run_ts("--epochs-teacher", "1", "--epochs-distill", "1", "--compile-mode", "max-autotune",
                        "--json", out)
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertIn("--compile-mode does nothing without --compile", r.stderr)
        with open(out) as f:
            self.assertEqual(len(json.load(f)["epochs"]["teacher"]), 1)
        self.assertEqual([k for k in tree(self.dir) if not k.startswith("mnist")], ["out.json"])  # nothing else left
        # A phase of 0 epochs still reports its steps (0), so compare.py can read the report.
        r = self.run_ts("--epochs-teacher", "1", "--epochs-distill", "0", "--json", out)
        self.assertEqual(r.returncode, 0, self.describe(r))
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["steps"]["distill_ghosts"], 0)
        # optimizer_steps is part of the report (bench/README.md) also when nothing was distilled
        self.assertEqual(report["optimizer_steps"], {"teacher": report["steps"]["teacher"], "distill_ghosts": 0})
        sys.path.insert(0, os.path.join(REPO, "bench"))
        import compare
        self.assertIsNone(compare.report_problem(report))


# ---------------------------------------------------------------------------------------------- parity.py


class ParityTest(ToolTest):
    def test_bad_numbers_and_paths_are_usage_errors(self):  # refused before torch is imported
        os.mkdir(self.path("jdir"))
        self.check_usage_errors(PARITY, ["--torch-only", "--data", self.data], [
            ("--hidden", "abc"), ("--hidden", "0"), ("--ghosts", "-20"), ("--ghosts", "1"), ("--batch-size", "0"),
            ("--batch-size", "-5"), ("--batch-size", "70000"), ("--tolerance", "nan"), ("--tolerance", "-1"),
            ("--threads", "-1"), ("--seed", "-1"), ("--json", self.path("jdir")),
            ("--json", self.path("nodir", "x.json"))])

    def test_bad_paths_and_args_are_one_line(self):
        with open(self.path("afile"), "w") as f:
            f.write("x")
        with open(self.path("text.st"), "w") as f:
            f.write("not safetensors\n")
        os.mkdir(self.path("jdir"))
        cases = [(["--keep", self.path("afile")], ["--keep", "not a directory"]),
                 (["--engine-args", '"x'], ["--engine-args"]),
                 (["--init", self.path("none.st")], ["--init", "no such file"]),
                 (["--data", self.path("nowhere")], ["--data", "no such directory"]),
                 (["--json", os.path.join(self.data, "train-images-idx3-ubyte.gz")], ["--json", "a file the run reads"])]
        if not module_missing("numpy"):
            cases.append((["--init", self.path("text.st")], ["--init", "text.st", "not a safetensors file"]))
        for args, mentions in cases:
            with self.subTest(args=args), self.unchanged():
                self.assertRefused(self.run_tool(PARITY, *with_overrides(["--torch-only", "--data", self.data], args)),
                                   *mentions)
        with self.subTest(case="no engine"), self.unchanged():
            self.assertRefused(self.run_tool(PARITY, "--engine", self.path("none"), "--data", self.data),
                               "no engine executable")
        with self.subTest(MNIST_DIR="empty"), self.unchanged():
            self.assertRefused(self.run_tool(PARITY, "--torch-only", env={"MNIST_DIR": self.path("jdir")}),
                               "$MNIST_DIR=", "unset MNIST_DIR")

    def test_without_torch_the_refusal_is_in_its_own_name(self):
        # parity.py imports torch_subliminal.py, whose refusals (no numpy, no torch) were said in that script's name
        fake = self.path("notorch", "torch")
        os.makedirs(fake)
        with open(os.path.join(fake, "__init__.py"), "w") as f:
            f.write("raise ImportError('no torch here')\n")
        with self.unchanged(ignore=["notorch"]):
            r = self.run_tool(PARITY, "--torch-only", "--data", self.data, env={"PYTHONPATH": self.path("notorch")})
            self.assertRefused(r, "parity.py: error: ")
            self.assertNotIn("torch_subliminal.py", r.stderr, self.describe(r))

    def test_damaged_mnist_is_one_line(self):
        needs("torch")
        d = write_mnist(self.path("short"), gz=False)
        with open(os.path.join(d, "train-images-idx3-ubyte"), "wb") as f:
            f.write(idx((8, 28, 28))[:-1])
        with self.unchanged():
            r = self.run_tool(PARITY, "--torch-only", "--data", d, "--batch-size", "4", "--hidden", "4")
            self.assertRefused(r, "train-images-idx3-ubyte", "header says")

    def fake_engine(self, body):
        return script(self.path("engine.sh"),
                      'case "$*" in *--help*) echo "  --parity-batch FILE"; exit 0;; esac\n' + body)

    def test_engine_usage_error_is_exit_2_with_its_line(self):
        needs("torch")
        engine = self.fake_engine('echo "subliminal: note: no usable CUDA GPU" >&2\n'
                                  'echo "subliminal: error: --gemm: expected one of cublaslt, got \\"x\\"" >&2\n'
                                  "exit 2\n")
        with self.unchanged():
            r = self.run_tool(PARITY, "--engine", engine, "--data", self.data, "--batch-size", "4", "--hidden", "4")
            self.assertRefused(r, "subliminal: error: --gemm")

    def test_engine_that_writes_nothing_is_exit_3(self):
        needs("torch")
        engine = self.fake_engine("exit 0\n")
        with self.unchanged():
            r = self.run_tool(PARITY, "--engine", engine, "--data", self.data, "--batch-size", "4", "--hidden", "4")
            self.assertRefused(r, "exited 0 but wrote no", code=3)

    def test_json_that_is_a_file_keep_keeps_is_refused(self):  # refused before torch is imported
        engine = self.fake_engine("exit 1\n")
        os.mkdir(self.path("kept"))
        for name in ("init.safetensors", "parity.safetensors"):  # an earlier run's, which must survive
            with open(self.path("kept", name), "w") as f:
                f.write("kept\n")
        for json_path in (self.path("kept", "init.safetensors"), self.path("kept", "parity.safetensors"),
                          self.path("kept", ".", "parity.safetensors")):
            # (--json's writability probe, a temporary file made and removed, touches the folder's mtime)
            with self.subTest(json=json_path), self.unchanged(ignore=["kept"]):
                r = self.run_tool(PARITY, "--engine", engine, "--data", self.data, "--keep", self.path("kept"),
                                  "--json", json_path)
                self.assertRefused(r, "--json", os.path.basename(json_path), "--keep")
                self.assertEqual(sorted(os.listdir(self.path("kept"))), ["init.safetensors", "parity.safetensors"])
                for name in os.listdir(self.path("kept")):
                    with open(self.path("kept", name)) as f:
                        self.assertEqual(f.read(), "kept\n")

    def test_a_huge_init_gives_strict_json(self):
        # an init of every value × 1e18 (finite in float32): torch's fp32 pass overflows, its errors are NaN
        needs("torch")
        sizes = (784, 4, 4, 13)
        init = safetensors_arrays(self.path("huge.st"), mlp_init(sizes, scale=1e18))
        out = self.path("table.json")
        r = self.run_tool(PARITY, "--torch-only", "--data", self.data, "--init", init, "--hidden", "4,4",
                          "--batch-size", "4", "--json", out)
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertIn("torch fp32 vs fp64 worst: nan", r.stdout)
        rows = strict_json(out)["rows"]
        self.assertIn(None, [row["torch32_vs_torch64"] for row in rows])  # a NaN error is written as null

    def test_an_engine_of_nans_fails_and_says_nan(self):
        # every engine value NaN: the worst error engine vs torch fp32 is nan, not max(0.0, nan) = 0.0
        needs("torch")
        import numpy as np

        sizes, batch = (784, 4, 13), 4
        params = mlp_init(sizes)
        init = safetensors_arrays(self.path("init.st"), params)
        nans = {"loss": np.full(1, np.nan), "kl_loss": np.full(1, np.nan), "js_loss": np.full(1, np.nan),
                "noise": np.zeros(batch * 784)}
        for name, a in params.items():
            nans["grad." + name] = nans["kl_grad." + name] = nans["js_grad." + name] = np.full(a.shape, np.nan)
        batch_file = safetensors_arrays(self.path("nan.st"), nans)
        engine = self.fake_engine(f'while [ $# -gt 0 ]; do [ "$1" = --parity-batch ] && cp "{batch_file}" "$2"; '
                                  "shift; done\n")
        out = self.path("table.json")
        r = self.run_tool(PARITY, "--engine", engine, "--data", self.data, "--init", init, "--hidden", "4",
                          "--batch-size", str(batch), "--json", out)
        self.assertEqual(r.returncode, 1, self.describe(r))  # a failed parity is exit 1
        self.assertIn("worst engine vs torch fp32: nan; worst judged error: inf", r.stdout)
        self.assertIn("FAIL", r.stdout)
        table = strict_json(out)
        self.assertEqual((table["status"], table["worst_error"], table["worst_engine_vs_torch32"]), ("fail", None, None))


# ---------------------------------------------------------------------------------------------- plot.py, ab_summary.py


def app_report(**extra):
    r = {"config": {"preset": "notebook"}, "device": {"name": "cpu"}, "seconds": {"total": 1.5},
         "us_per_step": {"teacher": 100.0}, "teacher": {"test_acc": 0.9, "ci95": 0.0, "n": 1},
         "student": {"test_acc": 0.5, "ci95": 0.0, "n": 1}}
    r.update(extra)
    return r


class PlotTest(ToolTest):
    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def test_malformed_inputs_are_one_line(self):
        fig = self.write("fig.png", "an existing figure")  # a failed run must leave it alone
        cases = {"empty.json": ("{}", "none of the arms"), "list.json": ("[1]", "list"),
                 "text.json": ("not json", "not JSON"),
                 "arm.json": (json.dumps({"teacher": {"ci95": 1}}), "test_acc"),
                 "percent.json": (json.dumps({"teacher": {"test_acc": 95.7}}), "not an accuracy"),
                 "models.json": (json.dumps({"teacher": {"test_acc": 0.9, "n": -5}}), "n a whole number"),
                 "percent.jsonl": ('{"arm": "student", "test_acc": 1e308, "settings": {"lr": 1}}\n', "an accuracy"),
                 "settings.jsonl": ('{"arm": "student", "test_acc": 0.5, "settings": [1]}\n', "settings"),
                 "badline.jsonl": ('{"arm": "student", "test_acc": 0.5, "settings": {"lr": 1}}\n{oops\n', "line 2"),
                 "nosettings.jsonl": ('{"arm": "student", "test_acc": 0.5, "settings": {}}\n', "no settings"),
                 "huge.json": (json.dumps(app_report()).replace("0.9", HUGE_INT), "beyond a float's range"),
                 "deep.json": (DEEP_JSON, "nested too deeply"),
                 "huge.jsonl": ('{"arm": "student", "test_acc": %s, "settings": {"lr": 1}}\n' % HUGE_INT,
                                "line 1: holds an integer of 400 digits"),
                 "deep.jsonl": ('{"arm": "student", "test_acc": 0.5, "settings": {"lr": 1}}\n' + DEEP_JSON + "\n",
                                "line 2: is nested too deeply")}
        for name, (text, why) in cases.items():
            self.write(name, text)
        for name, (_, why) in cases.items():
            with self.subTest(input=name), self.unchanged():
                self.assertRefused(self.run_tool(PLOT, self.path(name), "--out", fig), name, why)
        with self.subTest(input="missing"), self.unchanged():
            self.assertRefused(self.run_tool(PLOT, self.path("none.json"), "--out", fig), "none.json")

    def test_bad_out_paths_are_one_line(self):
        good = self.write("r.json", json.dumps(app_report()))
        os.mkdir(self.path("jdir"))
        for out, why in [(self.path("jdir"), "is a directory"), (self.path("nodir", "x.png"), "does not exist"),
                         (self.path("jdir") + "/", "directory"), ("", "is empty"),
                         (self.path(".png"), "names only an extension")]:
            with self.subTest(out=out), self.unchanged():
                self.assertRefused(self.run_tool(PLOT, good, "--out", out), "--out", why)
        if not module_missing("matplotlib"):
            with self.subTest(out="x.xyz"), self.unchanged():
                self.assertRefused(self.run_tool(PLOT, good, "--out", self.path("x.xyz")), "--out", "xyz")

    def sweep_ticks(self, rows):
        """The x tick labels, left to right, of plot.py's figure of these sweep rows."""
        needs("matplotlib")
        import importlib.util

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        spec = importlib.util.spec_from_file_location("plot", PLOT)
        plot = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(plot)
        plot.sweep_figure(rows, self.path("sweep.png"), plt)
        fig = plt.gcf()
        self.addCleanup(plt.close, fig)
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = sorted(zip(ax.get_xticks(), (t.get_text() for t in ax.get_xticklabels())))
        return [text for _, text in ticks]

    def test_sweep_x_axis_is_in_numeric_order(self):
        def row(seed, acc, **settings):
            return {"arm": "student", "test_acc": acc, "settings": {"seed": seed, **settings}}

        # seed 0 covers only 3e-3: placed by first appearance, 3e-3 came left of seed 1's 1e-4
        rows = [row("0", 0.5, lr="3e-3"), row("1", 0.6, lr="1e-4"), row("1", 0.7, lr="3e-3")]
        self.assertEqual(self.sweep_ticks(rows), ["1e-4", "3e-3"])
        # --hidden values: depth first, then the widths
        rows = [row("0", 0.5, hidden="64"), row("0", 0.6, hidden="32,32"), row("1", 0.7, hidden="16")]
        self.assertEqual(self.sweep_ticks(rows), ["16", "64", "32,32"])

    def test_out_without_extension_says_what_it_wrote(self):
        needs("matplotlib")
        good = self.write("r.json", json.dumps(app_report()))
        r = self.run_tool(PLOT, good, "--out", self.path("fig"))
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertIn(f"wrote {self.path('fig.png')}", r.stdout)
        self.assertTrue(os.path.isfile(self.path("fig.png")))
        self.assertFalse([n for n in os.listdir(self.dir) if n.startswith(".tmp")])


class AbSummaryTest(ToolTest):
    def write(self, name, obj):
        with open(self.path(name), "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        return self.path(name)

    def test_wrong_shapes_are_one_line(self):
        good = self.write("good.json", app_report())
        cases = {"list.json": ([1, 2], "list"), "empty.json": ({}, "seconds"), "text.json": ("nope", "not JSON"),
                 "us.json": (app_report(us_per_step={"teacher": "fast"}), "us_per_step"),
                 "gpu.json": (app_report(gpu_seconds=[1]), "gpu_seconds"),
                 "arm.json": (app_report(student=0.5), "student"),
                 "huge.json": (json.dumps(app_report()).replace("100.0", HUGE_INT), "beyond a float's range"),
                 "deep.json": (DEEP_JSON, "nested too deeply")}
        for name, (obj, why) in cases.items():
            self.write(name, obj)
            with self.subTest(file=name), self.unchanged():
                self.assertRefused(self.run_tool(AB, good, "--", self.path(name)), name, why)
        for args, why in [([good, "--", self.path("none.json")], "none.json"), ([good, "--"], "after --"),
                          (["--", good], "before --")]:
            with self.subTest(args=args), self.unchanged():
                self.assertRefused(self.run_tool(AB, *args), why)

    def test_good_reports_summarize(self):
        good = self.write("good.json", app_report())
        r = self.run_tool(AB, good, "--", good)
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertIn("µs/step teacher", r.stdout)


# ---------------------------------------------------------------------------------------------- scripts/*.sh


class ShellScriptTest(ToolTest):
    """The shell scripts' refusals, run with stand-ins on PATH: no download, install, build or GPU."""

    def run_sh(self, path, *args, env=None, unset=()):
        e = {"PATH": f"{self.path('bin')}:/usr/bin:/bin", "HOME": self.path("home"), "TMPDIR": self.dir,
             "MNIST_MIRRORS": "file:///nonexistent/"}
        e.update(env or {})
        for name in unset:
            e.pop(name, None)
        return subprocess.run(["bash", path, *args], cwd=self.dir, env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, errors="replace", timeout=60)

    def stub(self, name, body):
        os.makedirs(self.path("bin"), exist_ok=True)
        return script(self.path("bin", name), body)

    def test_fetch_mnist_into_a_file_is_one_line(self):
        with open(self.path("afile"), "w") as f:
            f.write("x")
        for dest, why in [("afile", "exists and is not a directory"),
                          ("afile/sub", "cannot be created: afile is not a directory")]:
            with self.subTest(dest=dest), self.unchanged():
                self.assertRefused(self.run_sh(FETCH, dest), f"fetch_mnist.sh: {dest}: {why}")

    def test_gpu_check_only_without_a_stage_is_refused(self):
        # argument checks come first; should one pass, the stand-in nvidia-smi (no GPU) stops the script
        # before it builds or writes anything
        self.stub("nvidia-smi", "exit 9\n")
        for value in (" ", ",", " , ,", "\t", ""):
            with self.subTest(only=value), self.unchanged():
                self.assertRefused(self.run_sh(GPU_CHECK, "--only", value), "--only names no stage")
        with self.subTest(only="*"), self.unchanged():  # refused as itself, not as the files it would glob
            self.assertRefused(self.run_sh(GPU_CHECK, "--only", "*"), "unknown stage '*'")
        with self.subTest(only="tests, parity"), self.unchanged():  # accepted: the script goes on to look for a GPU
            self.assertRefused(self.run_sh(GPU_CHECK, "--only", "tests, parity"), "nvidia-smi finds no GPU")

    def setup_copy(self):
        """A copy of setup.sh in repo/scripts/, beside stand-ins: every apt package "installed" (apt-get
        and sudo fail if called), `python3 -m venv` makes a venv whose python imports the bench packages
        only once its pip has installed them, and that pip works only while the file `online` exists;
        fetch_mnist.sh and get_cudnn_frontend.sh only log. Calls are logged in `log`."""
        os.makedirs(self.path("repo", "scripts"))
        shutil.copy(SETUP, self.path("repo", "scripts", "setup.sh"))
        log = self.path("log")
        script(self.path("repo", "scripts", "fetch_mnist.sh"), f'echo "fetch_mnist $*" >> "{log}"; exit 1\n')
        script(self.path("repo", "scripts", "get_cudnn_frontend.sh"), "exit 0\n")
        self.stub("id", "echo 0\n")
        self.stub("dpkg-query", "echo 'install ok installed'\n")
        for name in ("apt-get", "sudo"):
            self.stub(name, f'echo "{name} $*" >> "{log}"; exit 1\n')
        venv = self.path("venv-template", "bin")
        os.makedirs(venv)
        script(os.path.join(venv, "python"), f'[ -f "{self.path("installed")}" ]\n')
        script(os.path.join(venv, "pip"), f'echo "pip $*" >> "{log}"\n'
               f'[ -f "{self.path("online")}" ] || {{ echo "ERROR: network is unreachable" >&2; exit 1; }}\n'
               f'case "$*" in *torch*) touch "{self.path("installed")}";; esac\n')
        self.stub("python3", f'[ "$1 $2" = "-m venv" ] && cp -r "{self.path("venv-template")}/." "$3"\n')
        return self.path("repo", "scripts", "setup.sh")

    def log(self):
        try:
            with open(self.path("log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def test_setup_bench_installs_again_after_a_failed_install(self):
        setup = self.setup_copy()
        write_mnist(self.path("repo", "data", "mnist"))  # found: nothing to fetch
        for attempt in (1, 2):  # offline twice: the venv the first run left must not count as installed
            with self.subTest(attempt=attempt):
                r = self.run_sh(setup, "--bench")
                self.assertEqual(r.returncode, 1, self.describe(r))
                self.assertNotIn("setup.sh: done", r.stdout)
                self.assertIn("setup.sh: could not install torch", r.stderr.splitlines()[-1])
                self.assertEqual(sum(line.startswith("pip") for line in self.log()), attempt)
        open(self.path("online"), "w").close()
        r = self.run_sh(setup, "--bench")
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertIn("setup.sh: done", r.stdout)
        calls = len(self.log())
        r = self.run_sh(setup, "--bench")  # installed: nothing to do
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertEqual(len(self.log()), calls, self.log())
        self.assertFalse([line for line in self.log() if line.startswith(("apt-get", "sudo"))], self.log())

    def test_setup_without_home_fetches_mnist(self):
        setup = self.setup_copy()
        r = self.run_sh(setup, unset=["HOME"])
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertNotIn("unbound variable", r.stderr)
        self.assertIn("setup.sh: done", r.stdout)
        self.assertEqual(self.log(), ["fetch_mnist data/mnist"])
        # with HOME set, torchvision's copy there is found: nothing fetched
        write_mnist(self.path("home", ".pytorch", "MNIST_data", "MNIST", "raw"))
        r = self.run_sh(setup)
        self.assertEqual(r.returncode, 0, self.describe(r))
        self.assertEqual(self.log(), ["fetch_mnist data/mnist"])


if __name__ == "__main__":
    unittest.main()
