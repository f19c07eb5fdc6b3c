#!/usr/bin/env python3
"""bench/parity.py — one-batch parity between the engine (apps/subliminal) and PyTorch, through checkpoints.

1. `subliminal --save-init F --epochs-teacher 0 --epochs-distill 0 --device D` writes the shared init.
2. `subliminal --parity-batch OUT --load-init F --batch-size 256 --device D` writes, from that init:
     loss, grad.net.*          cross-entropy on logits[:, :10] of the first 256 training images (file
                               order, (x/255 - 0.5)/0.5 in float32) and its gradients;
     noise, kl_loss, kl_grad.* the distillation loss kl_div(log_softmax(s/T), softmax(t/T), batchmean)·T²
                               on ghost columns 10..10+M of that noise batch, student = the init,
                               teacher = the init with every parameter × 1.1, T = 2, and its gradients;
     js_loss, js_grad.*        the same with Jensen-Shannon, ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2
                               (subliminal --divergence js).
3. PyTorch recomputes the same from F in float32 and in float64 (on the engine's exact float32 inputs)
   and the script prints, per tensor, max|a − b| / max|fp64 reference| for engine vs torch fp32, engine
   vs torch fp64, and torch fp32 vs torch fp64 (the size of honest float32 rounding).

Exit status: 0 when every tensor agrees within --tolerance (default 1e-4): engine vs torch fp32, or, where
that is worse, engine vs torch fp64 (then the gap is torch's own float32 rounding: a tiny KL loss of
near-cancelling terms loses ~1e-5..1e-4 relative in fp32); 1 when one does not; 2 for bad input — a flag
value, a path (--json, --keep, --init, --engine; a --json that is the --init file or a file --keep
keeps), the data (--data, a set $MNIST_DIR that does not hold MNIST, a damaged IDX file), or flags the
engine refuses (its exit status 2: its one line is passed on) — said in one line on stderr (a flag given
twice too), before any
computing where it can be (the flags and paths are checked before `import torch`); 3 when the engine
cannot produce the batch (it fails otherwise, or exits 0 without writing its file, or writes one that
cannot be read); 130 for Ctrl-C (one line). A NaN error fails the comparison and is printed as nan; --json is strict JSON, with
NaN and infinite errors written as null.

  python3 bench/parity.py --device cpu --data /path/to/mnist
  python3 bench/parity.py --torch-only          # PyTorch side alone (fp32 vs fp64), no engine
"""
import atexit
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_io  # noqa: E402  (no torch)
from bench_io import shown  # noqa: E402
from machine import usable_cores  # noqa: E402

# imported by main() once the flags and paths are checked (torch takes seconds to import):
# torch_subliminal dies with a clear message when torch or numpy is missing
ts = np = torch = F = None

DEFAULT_T, DEFAULT_SCALE = 2.0, 1.1
MAX_BATCH = 60000  # the MNIST training set


def die(message, code=2):
    print(f"parity.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def note(message):
    print(f"parity.py: note: {message}", file=sys.stderr, flush=True)


def run_engine(cmd, what):
    """The engine's stdout; dies with exit 2 and the engine's own line when it refuses its flags or
    files (its exit status 2), 3 when it fails otherwise."""
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                           timeout=600)
    except OSError as e:
        die(f"cannot run the engine {shown(cmd[0])} ({e.strerror or e})", 3)
    except subprocess.TimeoutExpired:
        die(f"the engine took over 10 minutes for {what}", 3)
    if r.returncode == 2:
        lines = [line.strip() for line in r.stderr.splitlines() if line.strip()]
        die(f"{what} refused its input: {shown(lines[-1]) if lines else '(exit 2, no message)'}", 2)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        die(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}", 3)
    return r.stdout


def torch_side(init, images_u8, labels, noise, sizes, ghosts, T, scale, dtype, device):
    """Loss and gradients (numpy float64) for the CE batch and the KL batch, computed in `dtype`."""
    names = list(ts.MLP(sizes).state_dict().keys())

    def model_from(tensors32):
        m = ts.MLP(sizes).to(device=device, dtype=dtype)
        m.load_state_dict({k: torch.from_numpy(tensors32[k]).to(device=device, dtype=dtype) for k in names})
        return m

    def grads_of(loss, model):
        gs = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)  # KL and JS share one graph
        return {n: g.detach().double().cpu().numpy() for (n, _), g in zip(model.named_parameters(), gs)}

    out = {}
    # cross-entropy on the image batch: ToTensor's x/255 then Normalize's (x - 0.5)/0.5, in float32
    x = torch.from_numpy(images_u8.reshape(len(images_u8), -1).astype(np.uint8))
    x = x.to(torch.float32).div(255).sub(0.5).div(0.5).to(device=device, dtype=dtype)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    student = model_from(init)
    loss = F.cross_entropy(student(x)[:, :ts.N_CLASSES], y)
    out["loss"] = np.array([loss.item()])
    for n, g in grads_of(loss, student).items():
        out["grad." + n] = g

    # distillation KL on the noise batch; the teacher's weights are rounded to float32 as the engine's are
    teacher32 = {k: (v.astype(np.float32) * np.float32(scale)).astype(np.float32) for k, v in init.items()}
    teacher = model_from(teacher32)
    xn = torch.from_numpy(noise.astype(np.float32)).to(device=device, dtype=dtype)
    g0, g1 = ts.N_CLASSES, ts.N_CLASSES + ghosts
    with torch.no_grad():
        t_logits = teacher(xn)[:, g0:g1]
    s_logits = student(xn)[:, g0:g1]
    log_q, log_p = F.log_softmax(s_logits / T, dim=-1), F.log_softmax(t_logits / T, dim=-1)
    kl = F.kl_div(log_q, log_p.exp(), reduction="batchmean") * (T * T)
    # Jensen-Shannon from its definition (torch_subliminal.js_divergence); torch's autograd
    # differentiates it.
    js = ts.js_divergence(log_q, log_p) * (T * T)
    for name, loss in (("kl", kl), ("js", js)):
        out[name + "_loss"] = np.array([loss.item()])
        for n, g in grads_of(loss, student).items():
            out[name + "_grad." + n] = g
    return out


def rel_err(a, b, ref):
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def worse(a, b):
    """The larger of two errors, NaN when either is NaN: max(0.0, nan) is 0.0 (a NaN compares false),
    which would print a worst error of 0 for a table of NaNs."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def judge(e32, e64, t32_vs_64, tolerance):
    """(reference, error) for one tensor, from its errors engine vs torch fp32 (e32), engine vs torch
    fp64 (e64) and torch fp32 vs fp64. The tensor passes when the engine agrees with torch fp32 within
    the tolerance, or — where torch's own fp32 rounding is the larger error, i.e. torch fp32 is further
    from float64 than the engine is (e.g. a tiny KL loss, a sum of near-cancelling terms) — when the
    engine agrees with the float64 reference within it. An engine further from float64 than torch fp32
    is judged against fp32. A non-finite error is inf (max() would pass over a NaN)."""
    against = "fp64" if e32 > tolerance and t32_vs_64 > e64 else "fp32"
    error = e64 if against == "fp64" else e32
    if not (math.isfinite(e32) and math.isfinite(e64)):
        error = float("inf")
    return against, error


def verdict(rows, worst_raw32, worst32, tolerance, problems):
    """(passed, the lines printed under the table): the worst errors, the verdict, the tensors judged
    against fp64 (and why, as judge() decides it) and the problems."""
    ok = worst32 <= tolerance and not math.isnan(worst_raw32) and not problems  # a NaN compares false: fail
    by64 = [r["tensor"] for r in rows if r.get("judged_against") == "fp64"]
    lines = [f"worst engine vs torch fp32: {worst_raw32:.2e}; worst judged error: {worst32:.2e} "
             f"(tolerance {tolerance:g}) -> {'PASS' if ok else 'FAIL'}"]
    if by64:
        lines.append("  judged against fp64 (engine vs torch fp32 is over the tolerance, and torch fp32 is further "
                     f"from fp64 than the engine is): {', '.join(by64)}")
    lines += [f"  problem: {pr}" for pr in problems]
    return ok, lines


def parse_args():
    p = bench_io.ArgumentParser(description="One-batch loss/gradient parity: engine vs PyTorch fp32/fp64.")
    p.add_argument("--engine", default=None, help="the app (default: build/apps/subliminal)")
    p.add_argument("--data", default="", help="MNIST IDX directory (raw or .gz)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="device the engine computes on (default cpu)")
    p.add_argument("--torch-device", choices=["cpu", "cuda"], default="cpu",
                   help="device of the torch fp32 computation (fp64 always runs on the CPU)")
    p.add_argument("--seed", type=bench_io.seed_type, default=0)
    p.add_argument("--hidden", type=bench_io.hidden_widths, default="256,256")
    p.add_argument("--ghosts", type=bench_io.ghosts_type, default=3)
    p.add_argument("--batch-size", type=bench_io.int_type(1, MAX_BATCH), default=256)
    p.add_argument("--init", default="", help="use this safetensors init instead of making one with --save-init")
    p.add_argument("--tolerance", type=bench_io.positive_float, default=1e-4,
                   help="max relative error allowed, engine vs torch fp32")
    p.add_argument("--keep", default="", help="keep the init and parity files in this directory")
    p.add_argument("--json", type=bench_io.output_file, default="", help="also write the table as JSON")
    p.add_argument("--threads", type=bench_io.threads_type, default=0,
                   help=f"CPU threads for engine and torch, 0..{bench_io.MAX_THREADS} (0: all usable cores)")
    p.add_argument("--engine-args", default=None,
                   help="extra flags for the engine's parity batch, e.g. \"--gemm tiled\" or --tf32 "
                        "(split like a shell would)")
    p.add_argument("--torch-only", action="store_true",
                   help="no engine: torch fp32 vs fp64 on a torch init and a torch.rand noise batch")
    args = p.parse_args(bench_io.glued_flag_value(sys.argv[1:], "--engine-args"))
    try:
        args.engine_argv = shlex.split(args.engine_args or "")
    except ValueError as e:
        die(f"--engine-args {shown(args.engine_args)}: {e}")
    if args.torch_only:
        for flag, value in (("--engine", args.engine), ("--device", args.device), ("--engine-args", args.engine_args)):
            if value is not None:
                note(f"{flag} does nothing with --torch-only")
    args.engine = os.path.abspath(args.engine or os.path.join(REPO, "build", "apps", "subliminal"))
    args.device = args.device or "cpu"
    args.sizes = (bench_io.IMAGE_PIXELS, *args.hidden, bench_io.N_CLASSES + args.ghosts)
    return args


INIT_FILE, PARITY_FILE = "init.safetensors", "parity.safetensors"  # what the engine writes into the work folder


def kept_files(args):
    """The files this run writes into its work folder (--keep): the engine's init, unless --init names
    one, and its parity batch; none with --torch-only (no engine runs)."""
    if args.torch_only:
        return []
    return ([] if args.init else [INIT_FILE]) + [PARITY_FILE]


def check_inputs(args):
    """Paths, the data directory and (--torch-only) the --init file, before torch is imported."""
    try:
        args.data_dir = bench_io.locate_mnist(args.data, REPO)
    except ValueError as e:
        die(str(e))
    why = bench_io.json_over_data(args.json, args.data_dir)
    if why:
        die(why)
    if args.keep:
        why = bench_io.output_dir_problem(args.keep)
        if why:
            die(f"--keep {shown(args.keep)}: {why}")
        for name in kept_files(args):  # the table, written last, would replace the kept file unasked
            if bench_io.same_file(args.json, os.path.join(args.keep, name)):
                die(f"--json {shown(args.json)} is the {name} this run keeps in --keep: the table would overwrite it")
    if args.init:
        if not os.path.isfile(args.init):
            die(f"--init {shown(args.init)}: " + ("is a directory" if os.path.isdir(args.init)
                                                  else "not a regular file" if os.path.exists(args.init)
                                                  else "no such file"))
        if bench_io.same_file(args.json, args.init):
            die(f"--json {shown(args.json)} is the --init file: the table would overwrite it")
    if not args.torch_only and not (os.path.isfile(args.engine) and os.access(args.engine, os.X_OK)):
        die(f"no engine executable at {shown(args.engine)} (build it, or pass --engine PATH)")
    args.init_tensors = None
    if args.torch_only and args.init:
        try:
            args.init_tensors, _ = bench_io.read_safetensors(args.init)
            bench_io.check_init(args.init_tensors, args.sizes, args.init)
        except ImportError:
            die(f"numpy is not installed for {sys.executable}")
        except ValueError as e:
            die(f"--init {e}")


def read_engine_file(path, what):
    """A safetensors file the engine wrote: exit 3 when it did not, or wrote one that cannot be read."""
    if not os.path.isfile(path):
        die(f"{what} exited 0 but wrote no {shown(path)}", 3)
    try:
        return bench_io.read_safetensors(path)
    except ValueError as e:
        die(f"{what} wrote an unreadable file: {e}", 3)


def first_batch(args):
    """The first --batch-size training images (uint8) and labels, in file order."""
    try:
        arrays = bench_io.load_mnist_arrays(args.data_dir)
    except ValueError as e:
        die(str(e))
    B = args.batch_size
    if len(arrays["train_images"]) < B:
        die(f"--batch-size {B}: the training set in {shown(args.data_dir)} holds only {len(arrays['train_images'])} images")
    return arrays["train_images"][:B], arrays["train_labels"][:B]


def make_workdir(args):
    """--keep's folder, or a temporary one removed at exit."""
    if not args.keep:
        workdir = tempfile.mkdtemp(prefix="parity_")
        atexit.register(shutil.rmtree, workdir, True)
        return workdir
    try:
        os.makedirs(args.keep, exist_ok=True)
    except OSError as e:
        die(f"--keep {shown(args.keep)}: cannot make it ({e.strerror or e})")
    return args.keep


class Inputs:
    """What both sides compute from: the init, the noise batch, T and the teacher's scale, and the
    engine's tensors (None with --torch-only)."""

    def __init__(self, init, init_path, noise, T=DEFAULT_T, scale=DEFAULT_SCALE, engine_out=None):
        self.init, self.init_path, self.noise = init, init_path, noise
        self.T, self.scale, self.engine_out = T, scale, engine_out


def torch_only_inputs(args):
    """--init's tensors (or torch's own init from --seed) and a torch.rand noise batch."""
    if args.init_tensors is not None:
        init = args.init_tensors
    else:
        torch.manual_seed(args.seed)
        init = {k: v.numpy().copy() for k, v in ts.MLP(args.sizes).state_dict().items()}
    B = args.batch_size
    noise = (torch.rand(B, ts.IMAGE_PIXELS, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1).numpy()
    print("parity.py: --torch-only: no engine; comparing torch fp32 with torch fp64")
    return Inputs(init, args.init, noise)


def engine_inputs(args, workdir, threads):
    """Steps 1 and 2 of the docstring: the engine writes the init (unless --init gives one) and the
    parity batch; both are read back."""
    engine, B = args.engine, args.batch_size
    help_text = run_engine([engine, "--help"], "subliminal --help")
    if "--parity-batch" not in help_text:
        die(f"{engine} has no --parity-batch option (rebuild the app); `--torch-only` checks the torch side", 3)
    common = ["--data", args.data_dir, "--device", args.device, "--threads", str(threads), "--seed", str(args.seed),
              "--hidden", ",".join(map(str, args.hidden)), "--ghosts", str(args.ghosts)]
    init_path = args.init
    if not init_path:
        init_path = os.path.join(workdir, INIT_FILE)
        if os.path.exists(init_path):
            os.remove(init_path)
        run_engine([engine, *common, "--save-init", init_path, "--epochs-teacher", "0", "--epochs-distill", "0",
                    "--cross-init", "false", "--no-progress"], "subliminal --save-init")
    parity_path = os.path.join(workdir, PARITY_FILE)
    if os.path.exists(parity_path):  # a --keep folder's earlier run: the engine will not overwrite it
        os.remove(parity_path)
    run_engine([engine, *common, "--parity-batch", parity_path, "--load-init", init_path,
                "--batch-size", str(B), *args.engine_argv], "subliminal --parity-batch")
    if args.init:  # the engine has read it already
        try:
            init, _ = bench_io.read_safetensors(init_path)
        except ValueError as e:
            die(f"--init {e}")
    else:
        init, _ = read_engine_file(init_path, "subliminal --save-init")
    engine_out, meta = read_engine_file(parity_path, "subliminal --parity-batch")
    try:
        T = float(meta.get("temperature", DEFAULT_T))
        scale = float(meta.get("teacher_scale", DEFAULT_SCALE))
    except (TypeError, ValueError):
        die(f"{shown(parity_path)}: temperature / teacher_scale in its metadata are not numbers", 3)
    if "noise" not in engine_out:
        die(f"{parity_path} holds no `noise` tensor", 3)
    if engine_out["noise"].size != B * ts.IMAGE_PIXELS:
        die(f"{parity_path}: its `noise` holds {engine_out['noise'].size} values, not {B} × {ts.IMAGE_PIXELS}", 3)
    noise = engine_out["noise"].reshape(B, ts.IMAGE_PIXELS)
    print(f"parity.py: engine {engine} on {args.device}; init {init_path}; batch {parity_path}")
    return Inputs(init, init_path, noise, T, scale, engine_out)


class Comparison:
    """One row per tensor (the errors of each pair of sides), and the worst of them."""

    def __init__(self):
        self.rows, self.worst32, self.worst_raw32, self.problems = [], 0.0, 0.0, []


def compare(keys, t32, t64, engine_out, tolerance):
    c = Comparison()
    for k in keys:
        ref = t64[k]
        row = {"tensor": k, "shape": list(ref.shape), "torch32_vs_torch64": rel_err(t32[k], ref, ref),
               "value": float(ref.reshape(-1)[0]) if k.endswith("loss") else float(np.max(np.abs(ref)))}
        c.rows.append(row)
        if engine_out is None:
            continue
        if k not in engine_out:
            c.problems.append(f"engine file lacks {k}")
            continue
        if engine_out[k].size != ref.size:
            c.problems.append(f"{k}: engine shape {list(engine_out[k].shape)}, torch {list(ref.shape)}")
            continue
        e = engine_out[k].astype(np.float64).reshape(ref.shape)
        row["engine_vs_torch32"] = rel_err(e, t32[k], ref)
        row["engine_vs_torch64"] = rel_err(e, ref, ref)
        if not np.all(np.isfinite(e)):
            c.problems.append(f"{k}: engine values are not all finite")
        e32 = row["engine_vs_torch32"]
        row["judged_against"], row["error"] = judge(e32, row["engine_vs_torch64"], row["torch32_vs_torch64"],
                                                    tolerance)
        c.worst_raw32 = worse(c.worst_raw32, e32)
        c.worst32 = worse(c.worst32, row["error"])
    return c


def print_table(rows, with_engine, B, sizes, ghosts, T, scale):
    print(f"\nOne batch of {B}, MLP {'-'.join(map(str, sizes))}, KL and JS on ghost columns "
          f"{ts.N_CLASSES}..{ts.N_CLASSES + ghosts - 1}, T = {T:g}, teacher = {scale:g} × init")
    print("error = max|a - b| / max|torch fp64|  (for the losses: |a - b| / |torch fp64|)\n")
    hdr = f"{'tensor':<24} {'shape':<12} {'value/max|.|':>13} "
    if with_engine:
        hdr += f"{'engine vs fp32':>15} {'engine vs fp64':>15} "
    hdr += f"{'fp32 vs fp64':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        line = f"{r['tensor']:<24} {'x'.join(map(str, r['shape'])):<12} {r['value']:>13.6g} "
        if with_engine:
            e32, e64 = r.get("engine_vs_torch32"), r.get("engine_vs_torch64")
            line += f"{e32:>15.2e} {e64:>15.2e} " if e32 is not None else f"{'missing':>15} {'':>15} "
        line += f"{r['torch32_vs_torch64']:>13.2e}"
        print(line)


def main():
    global ts, np, torch, F
    bench_io.stop_quietly_on_sigint("parity.py", "nothing compared (an existing --json is as it was)")
    args = parse_args()
    check_inputs(args)
    import torch_subliminal  # noqa: E402  (dies with a clear message when torch or numpy is missing)

    ts, np, torch, F = torch_subliminal, torch_subliminal.np, torch_subliminal.torch, torch_subliminal.F

    sizes, B = args.sizes, args.batch_size
    threads = args.threads if args.threads > 0 else usable_cores()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")  # no TF32 in the fp32 reference
    if args.torch_device == "cuda" and not torch.cuda.is_available():
        die("--torch-device cuda: torch.cuda.is_available() is False")
    images, labels = first_batch(args)
    workdir = make_workdir(args)
    inputs = torch_only_inputs(args) if args.torch_only else engine_inputs(args, workdir, threads)
    engine_out = inputs.engine_out

    names = list(ts.MLP(sizes).state_dict().keys())
    try:
        bench_io.check_init(inputs.init, sizes, inputs.init_path or "the init")
    except ValueError as e:
        die(f"--init {e}" if args.init else str(e), 2 if args.init else 3)
    t32 = torch_side(inputs.init, images, labels, inputs.noise, sizes, args.ghosts, inputs.T, inputs.scale,
                     torch.float32, torch.device(args.torch_device))
    t64 = torch_side(inputs.init, images, labels, inputs.noise, sizes, args.ghosts, inputs.T, inputs.scale,
                     torch.float64, torch.device("cpu"))

    keys = ["loss"] + ["grad." + n for n in names]
    for d in ("kl", "js"):
        keys += [d + "_loss"] + [d + "_grad." + n for n in names]
    c = compare(keys, t32, t64, engine_out, args.tolerance)
    print_table(c.rows, engine_out is not None, B, sizes, args.ghosts, inputs.T, inputs.scale)

    status = 0
    if engine_out is not None:
        ok, lines = verdict(c.rows, c.worst_raw32, c.worst32, args.tolerance, c.problems)
        print("\n" + "\n".join(lines))
        status = 0 if ok else 1
    else:
        worst = 0.0
        for r in c.rows:
            worst = worse(worst, r["torch32_vs_torch64"])
        print(f"\ntorch fp32 vs fp64 worst: {worst:.2e} (no engine compared)")
    if args.json:
        write_json(args.json, {
            "engine_device": None if engine_out is None else args.device, "torch_device": args.torch_device,
            "batch_size": B, "sizes": list(sizes), "temperature": inputs.T, "teacher_scale": inputs.scale,
            "tolerance": args.tolerance, "worst_error": None if engine_out is None else c.worst32,
            "worst_engine_vs_torch32": None if engine_out is None else c.worst_raw32,
            "status": "pass" if status == 0 else "fail", "problems": c.problems, "rows": c.rows,
            "framework": f"pytorch {torch.__version__}"})
    return status


def write_json(path, obj):
    try:
        bench_io.write_json_atomically(path, obj)
    except OSError as e:
        die(f"--json {shown(path)}: cannot write it ({e.strerror or e})")


if __name__ == "__main__":
    sys.exit(main())
