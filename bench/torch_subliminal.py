#!/usr/bin/env python3
"""bench/torch_subliminal.py — the seed notebook's "subliminal learning" MNIST experiment in PyTorch,
for side-by-side comparison with the C++/CUDA engine (apps/subliminal).

Same flags as the app where they overlap, and the same JSON report schema (apps/subliminal/report.cpp)
plus "framework" and "variant". Two variants:

  --variant faithful  the notebook as written: torchvision MNIST (PIL images + ToTensor + Normalize),
                      DataLoader(shuffle=True, pin_memory on cuda), RandomMNISTLike noise drawn per
                      __getitem__, loss.item() every step, the accuracy() helper over a DataLoader.
  --variant fast      the same experiment written the fast way in eager PyTorch: tensors on the device,
                      normalised once, randperm per epoch, noise from torch.rand on the device, losses
                      summed on the device; optional --compile (torch.compile) or --cuda-graphs (one
                      captured CUDA graph per training step, fresh noise generated inside the graph).

Both distill the student (same init as the teacher) and, unless --no-cross-init, a cross-init control
student (a fresh nn.Linear init from --control-seed, default seed + 1) on the teacher's ghost logits only.

Bad input — a flag value out of range, a --json path that cannot be written, a --data or $MNIST_DIR
that does not hold the four IDX files, a damaged IDX or --load-init file — is refused with one line
on stderr and exit status 2, before any
training. The flags, paths and --load-init are checked
before `import torch`, so such a mistake costs no start-up time. A --json report is written
atomically after the run: an existing file is replaced only by a complete report.

  python3 bench/torch_subliminal.py --variant fast --device cpu --data /path/to/mnist --json out.json
"""
import time

T_START = time.perf_counter()  # before importing torch: seconds.total covers the whole script
T_START_WALL = time.time()  # the report's "started"

import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import warnings

import bench_io
from bench_io import IMAGE_PIXELS, MNIST_FILES, N_CLASSES, idx_path, shown
from machine import cpu_model, usable_cores

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMPILE_MODES = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


# Named after the program that runs: parity.py imports this module, and its refusals (no numpy, no
# torch) must not be said in this script's name.
PROG = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "torch_subliminal.py"


def die(message, code=2):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def stop_if_nonfinite(loss, phase, epoch):
    """A NaN/Inf epoch loss ends the run with exit 3 and no report, as the app does (its numbers
    would be meaningless, and a report would hold bare NaN tokens, which are not JSON)."""
    if not math.isfinite(loss):
        print(f"{PROG}: stopped: non-finite loss in {phase}, epoch {epoch} ({loss})", file=sys.stderr)
        sys.exit(3)


def note(message):
    print(f"{PROG}: note: {message}", file=sys.stderr, flush=True)


NUMPY_MISSING = (f"numpy is not installed for {sys.executable} (Debian: apt-get install python3-numpy; "
                 "pip: pip install numpy)")


# ----------------------------------------------------------------------------------------------
# Flags and input files, checked before numpy and torch are imported.


def parse_args(argv=None):
    p = bench_io.ArgumentParser(
        description="The seed notebook's subliminal-learning MNIST experiment in PyTorch (faithful or fast), "
                    "writing the app's JSON report schema.")
    p.add_argument("--variant", choices=["faithful", "fast"], default="fast")
    p.add_argument("--data", default="", help="directory with the MNIST IDX files (raw or .gz)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=bench_io.seed_type, default=0, help="0 .. 2^64-1")
    p.add_argument("--ghosts", type=bench_io.ghosts_type, default=3)
    p.add_argument("--hidden", type=bench_io.hidden_widths, default="256,256",
                   help=f"hidden widths, comma-separated (each 1..{bench_io.MAX_WIDTH})")
    p.add_argument("--batch-size", type=bench_io.int_type(1, bench_io.MAX_BATCH), default=256)
    p.add_argument("--lr", type=bench_io.adam_lr, default=3e-4)
    p.add_argument("--epochs-teacher", type=bench_io.epochs_type, default=5)
    p.add_argument("--epochs-distill", type=bench_io.epochs_type, default=5)
    p.add_argument("--temperature", type=bench_io.float32_positive, default=1.0)
    p.add_argument("--divergence", choices=["kl", "js"], default="kl",
                   help="fast variant: the students' loss, KL (the notebook's) or Jensen-Shannon (the app's "
                        "--divergence js)")
    p.add_argument("--json", type=bench_io.output_file, default="", help="write the report to this JSON file")
    p.add_argument("--threads", type=bench_io.threads_type, default=0,
                   help=f"torch CPU threads, 0..{bench_io.MAX_THREADS} (0: all usable cores)")
    p.add_argument("--load-init", default="", help="safetensors init from the app's --save-init")
    p.add_argument("--no-cross-init", action="store_true", help="skip the cross-init control student")
    p.add_argument("--control-seed", type=bench_io.seed_type, default=None,
                   help="seed of the cross-init control's fresh init (default: seed + 1)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmuls (PyTorch's default: off)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars (faithful variant)")
    p.add_argument("--compile", action="store_true", help="fast variant: torch.compile the loss and Adam step")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode with --compile (default: default)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="fast variant on cuda: capture each training step as a CUDA graph")
    p.add_argument("--arms", choices=["together", "sequential"], default=None,
                   help="fast variant: distill student and control in one step (as the app, the default) "
                        "or one after the other")
    args = p.parse_args(argv)
    args.hidden_sizes = args.hidden
    if args.variant == "faithful" and (args.compile or args.cuda_graphs):
        p.error("--compile and --cuda-graphs belong to --variant fast")
    if args.variant == "faithful" and args.divergence != "kl":
        p.error("--divergence js belongs to --variant fast (the notebook as written distils with KL)")
    if args.compile and args.cuda_graphs:
        p.error("pick one of --compile and --cuda-graphs (for compiled graphs: --compile --compile-mode reduce-overhead)")
    if args.cuda_graphs and args.device == "cpu":
        p.error("--cuda-graphs needs --device cuda")
    # options that the other options make meaningless: said, not silently dropped
    if args.compile_mode is not None and not args.compile:
        note("--compile-mode does nothing without --compile")
    if args.arms is not None and args.variant == "faithful":
        note("--arms does nothing with --variant faithful (it distills the arms one after the other)")
    if args.progress and args.variant == "fast":
        note("--progress does nothing with --variant fast (progress bars are the faithful variant's)")
    if args.control_seed is not None and args.no_cross_init:
        note("--control-seed does nothing with --no-cross-init")
    if args.control_seed is not None and args.control_seed == args.seed and not args.load_init and not args.no_cross_init:
        p.error(f"--control-seed {args.control_seed} is --seed's: the cross-init control would start from the "
                "teacher's own init (a second same-init student); give another seed")
    args.compile_mode = args.compile_mode or "default"
    args.arms = args.arms or "together"
    if args.control_seed is None:
        args.control_seed = (args.seed + 1) % (bench_io.MAX_SEED + 1)
    return args


def check_inputs(args):
    """The data directory and --load-init (read and checked against the MLP's shapes: numpy only).
    Sets args.data_dir and args.init_tensors."""
    try:
        args.data_dir = bench_io.locate_mnist(args.data, REPO)
    except ValueError as e:
        die(str(e))
    why = bench_io.json_over_data(args.json, args.data_dir)
    if why:
        die(why)
    args.init_tensors = None
    if args.load_init:
        if not os.path.isfile(args.load_init):
            die(f"--load-init {shown(args.load_init)}: "
                + ("is a directory" if os.path.isdir(args.load_init)
                   else "not a regular file" if os.path.exists(args.load_init) else "no such file"))
        if bench_io.same_file(args.json, args.load_init):
            die(f"--json {shown(args.json)} is the --load-init file: the report would overwrite it")
        sizes = (IMAGE_PIXELS, *args.hidden_sizes, N_CLASSES + args.ghosts)
        try:
            args.init_tensors, _ = bench_io.read_safetensors(args.load_init)
            bench_io.check_init(args.init_tensors, sizes, args.load_init)
        except ImportError:
            die(NUMPY_MISSING)
        except ValueError as e:
            die(f"--load-init {e}")


if __name__ == "__main__":
    bench_io.stop_quietly_on_sigint(PROG, "no report written (an existing --json is as it was)")
    ARGS = parse_args()
    check_inputs(ARGS)

try:
    import numpy as np
except ImportError:
    die(NUMPY_MISSING)
try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
except ImportError as e:
    die(f"PyTorch is not importable from {sys.executable} ({e}). Install it (Debian: apt-get install "
        "python3-torch python3-torchvision; pip: pip install torch torchvision) or run this script with a "
        "python that has it.")

T_IMPORTED = time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Files: MNIST IDX (raw or .gz) and safetensors, with numpy only (bench_io.py).


def load_mnist_arrays(directory):
    try:
        return bench_io.load_mnist_arrays(directory)
    except ValueError as e:
        die(str(e))


def write_json_atomically(path, obj):
    try:
        bench_io.write_json_atomically(path, obj)
    except OSError as e:
        die(f"--json {shown(path)}: cannot write it ({e.strerror or e})")


# ----------------------------------------------------------------------------------------------
# The model (the notebook's class, verbatim in behaviour).


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        layers = []
        for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.view(x.size(0), -1))


def js_divergence(log_q, log_p):
    """Jensen-Shannon of two rows of log-probabilities, batch mean: ½ KL(p ‖ m) + ½ KL(q ‖ m),
    m = (p + q)/2, by torch's kl_div with log targets (the app's --divergence js, ops/loss.h).
    The one definition the fast variant trains with and bench/parity.py checks the engine against."""
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return (F.kl_div(log_m, log_p, reduction="batchmean", log_target=True) +
            F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)) / 2


def load_init_into(model, tensors):
    """Copies a safetensors init written by the app's --save-init (net.0.weight, ...; read and checked
    against this MLP's names and shapes by check_inputs) into `model`."""
    state = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(tensors[k])).to(v.dtype) for k, v in state.items()})


def make_control(sizes, seed):
    """A fresh nn.Linear-default init from `seed`, without disturbing the global RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return MLP(sizes)


# ----------------------------------------------------------------------------------------------
# Statistics and reporting (the app's shapes).


# Student's t quantile for 0.975, 1..30 degrees of freedom (the app's table, report.cpp).
T_975 = [12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
         2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
         2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
         2.048407, 2.045230, 2.042272]


def student_t_975(degrees):
    """The app's student_t_975: the table, then the Cornish-Fisher expansion beyond 30."""
    if degrees <= 30:
        return T_975[degrees - 1]
    z, v = 1.959963984540054, float(degrees)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def stats_json(values):
    """The app's summarize(): ci95 is the paper's 1.96·std/√n, ci95_t Student's t's."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = ci95 = ci95_t = 0.0
    if n > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        ci95 = 1.96 * std / math.sqrt(n)
        ci95_t = student_t_975(n - 1) * std / math.sqrt(n)
    return {"test_acc": mean, "std": std, "ci95": ci95, "ci95_t": ci95_t, "n": n, "per_model": list(values)}


def epoch_entry(epoch, key, loss, acc, seconds):
    e = {"epoch": epoch, key: loss, key + "_per_model": [loss]}
    if acc is not None:
        e["test_acc"] = acc
        e["test_acc_per_model"] = [acc]
    e["seconds"] = seconds
    return e


class Clock:
    """Wall time (after a device sync) and, on cuda, CUDA-event time, summed per phase."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.wall = {}
        self.gpu = {}
        self.steps = {}
        self.warm = {}  # phase -> [seconds, steps] over epochs that were not the first of their loop


    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, name, steps=0, cold=False):
        """Times one epoch of training steps. `steps` counts the app's way: one distillation step
        advances every arm by one batch, so an arm trained on its own adds steps / arms. `cold`
        marks the first epoch of a loop (compilation, graph capture, cold caches)."""
        self.sync()
        ev0 = ev1 = None
        if self.cuda:
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev0.record()
        t0 = time.perf_counter()
        box = {}
        yield box
        if self.cuda:
            ev1.record()
        self.sync()
        dt = time.perf_counter() - t0
        gpu_dt = ev0.elapsed_time(ev1) / 1e3 if self.cuda else None
        box["seconds"] = dt
        self.wall[name] = self.wall.get(name, 0.0) + dt
        self.steps[name] = self.steps.get(name, 0) + steps
        if not cold:  # on the µs/step clock, as the app: GPU time on cuda, wall time on the CPU
            w = self.warm.setdefault(name, [0.0, 0])
            w[0] += gpu_dt if self.cuda else dt
            w[1] += steps
        if self.cuda:
            self.gpu[name] = self.gpu.get(name, 0.0) + gpu_dt


def fmt_acc(a):
    return f"{a:.4%}"


# ----------------------------------------------------------------------------------------------
# Variant 1: the notebook as written.


class NotebookMNIST(Dataset):
    """What torchvision.datasets.MNIST.__getitem__ does, for when torchvision is not installed:
    Image.fromarray(uint8 28x28, mode "L") then the transform."""

    def __init__(self, images, labels, transform):
        self.data = torch.from_numpy(np.ascontiguousarray(images))
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        from PIL import Image

        img, target = self.data[index], int(self.targets[index])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow ≥ 11.3 deprecates mode=
            img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def notebook_transform():
    try:
        from torchvision import transforms

        return transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]), "torchvision"
    except ImportError:

        def tfm(pic):  # ToTensor (uint8 HWC → float CHW / 255) then Normalize((0.5,), (0.5,))
            t = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(pic.size[1], pic.size[0], 1)
            t = t.permute((2, 0, 1)).contiguous().to(dtype=torch.get_default_dtype()).div(255)
            return t.sub(0.5).div(0.5)

        return tfm, "manual"


def notebook_datasets(data_dir, tmp_root):
    """train_ds, test_ds, how: torchvision.datasets.MNIST on ROOT/MNIST/raw/<uncompressed IDX files>
    (works unchanged from torchvision 0.14 to 0.29: _check_exists only looks for the four files)."""
    tfm, tfm_kind = notebook_transform()
    try:
        from torchvision import datasets
    except ImportError:
        arrays = load_mnist_arrays(data_dir)
        return (NotebookMNIST(arrays["train_images"], arrays["train_labels"], tfm),
                NotebookMNIST(arrays["test_images"], arrays["test_labels"], tfm), "own Dataset (no torchvision)")
    raw = os.path.join(tmp_root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    sources = {}
    try:
        for key, base in MNIST_FILES.items():
            src = sources[key] = idx_path(data_dir, base)
            dst = os.path.join(raw, base)
            if src.endswith(".gz"):
                bench_io.gunzip_to(src, dst)
            else:
                os.symlink(os.path.abspath(src), dst)
        # torchvision reads the files without checking them (a short file is a reshape error deep
        # inside it): the headers and sizes here, the labels in full (they are small)
        for split in ("train", "test"):
            images = os.path.join(raw, MNIST_FILES[split + "_images"])
            labels = bench_io.read_idx(sources[split + "_labels"])
            bench_io.check_mnist_split(split, sources[split + "_images"],
                                       bench_io.idx_dims(images, sources[split + "_images"]),
                                       sources[split + "_labels"], labels.shape, labels)
    except ValueError as e:
        die(str(e))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_ds = datasets.MNIST(root=tmp_root, train=True, download=False, transform=tfm)
        test_ds = datasets.MNIST(root=tmp_root, train=False, download=False, transform=tfm)
    return train_ds, test_ds, f"torchvision.datasets.MNIST ({tfm_kind} transforms)"


class RandomMNISTLike(Dataset):
    """Random images with MNIST shape, already in [-1, 1]."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, _):
        return torch.rand(1, 28, 28) * 2 - 1  # no label


def progress_bar(iterable, desc, enabled):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(iterable, desc=desc, leave=False)
        except ImportError:
            pass

    class Quiet:  # tqdm's interface, silent
        def __iter__(self):
            return iter(iterable)

        def set_postfix(self, **_):
            pass

    return Quiet()


def run_faithful(args, ctx):
    device, clock, report = ctx["device"], ctx["clock"], ctx["report"]
    DEVICE = device.type
    GHOST_IDX = torch.arange(N_CLASSES, N_CLASSES + args.ghosts)
    LR, BATCH_SIZE, T = args.lr, args.batch_size, args.temperature
    pin = DEVICE == "cuda"

    teacher, student, control = ctx["teacher"], ctx["student"], ctx["control"]

    t0 = time.perf_counter()
    tmp_root = tempfile.mkdtemp(prefix="torch_subliminal_mnist_")
    try:
        train_ds, test_ds, how = notebook_datasets(ctx["data_dir"], tmp_root)
        train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, pin_memory=pin)
        test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE, shuffle=False, pin_memory=pin)
        rand_ds = RandomMNISTLike(n=len(train_ds))
        rand_loader = DataLoader(rand_ds, batch_size=BATCH_SIZE, shuffle=True, pin_memory=pin)
        report["seconds"]["load"] = time.perf_counter() - t0
        report["data"]["pipeline"] = how
        steps_per_epoch = len(train_loader)

        def ce_first10(logits, labels):
            return nn.functional.cross_entropy(logits[:, :N_CLASSES], labels)

        @torch.inference_mode()
        def accuracy(model, loader):
            model.eval()
            correct, total = 0, 0
            for x, y in loader:
                x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
                pred = model(x)[:, :N_CLASSES].argmax(dim=-1)
                correct += (pred == y).sum().item()
                total += y.numel()
            return correct / total if total else 0.0

        def timed_accuracy(model, loader):
            t = time.perf_counter()
            acc = accuracy(model, loader)
            report["seconds"]["eval"] += time.perf_counter() - t
            return acc

        # The notebook does not evaluate before training, and a DataLoader draws its base seed from
        # the global generator each time iteration starts (even unshuffled), so this extra pass runs
        # in a forked RNG: the notebook's stream of shuffles and noise stays the notebook's.
        with torch.random.fork_rng(devices=[]):
            ctx["final"]["reference"] = timed_accuracy(teacher, test_loader)

        def train_teacher(model, train_loader, test_loader, epochs):
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            for epoch in range(1, epochs + 1):
                with clock.phase("teacher", steps_per_epoch, cold=epoch == 1) as box:
                    model.train()
                    running, n = 0.0, 0
                    pbar = progress_bar(train_loader, f"[Teacher] {epoch}/{epochs}", args.progress)
                    for x, y in pbar:
                        x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
                        loss = ce_first10(model(x), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        bs = x.size(0)
                        running += loss.item() * bs
                        n += bs
                        pbar.set_postfix(loss=f"{loss.item():.4f}")
                    epoch_loss = running / max(1, n)
                stop_if_nonfinite(epoch_loss, "teacher training", epoch)
                acc = timed_accuracy(model, test_loader)
                print(f"[Teacher] epoch={epoch} loss={epoch_loss:.4f} test_acc={acc:.4%}", flush=True)
                report["epochs"]["teacher"].append(epoch_entry(epoch, "loss", epoch_loss, acc, box["seconds"]))

        arms = [("student", "Student", student)]
        if control is not None:
            arms.append(("cross_init", "Cross-init", control))
        n_arms = len(arms)

        def distill_subliminal(student, teacher, rand_loader, test_loader, epochs, temperature, key, label):
            teacher.eval()
            opt = torch.optim.Adam(student.parameters(), lr=LR)
            T = temperature
            for epoch in range(1, epochs + 1):
                with clock.phase("distill_ghosts", steps_per_epoch / n_arms, cold=epoch == 1) as box:
                    student.train()
                    running, n = 0.0, 0
                    pbar = progress_bar(rand_loader, f"[{label}] {epoch}/{epochs}", args.progress)
                    for x in pbar:  # dataset returns tensors directly
                        x = x.to(DEVICE, non_blocking=True)
                        with torch.no_grad():
                            t_logits = teacher(x)[:, GHOST_IDX]
                        s_logits = student(x)[:, GHOST_IDX]
                        loss = nn.functional.kl_div(
                            nn.functional.log_softmax(s_logits / T, dim=-1),
                            nn.functional.softmax(t_logits / T, dim=-1),
                            reduction="batchmean",
                        ) * (T * T)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        bs = x.size(0)
                        running += loss.item() * bs
                        n += bs
                        pbar.set_postfix(kl=f"{loss.item():.4f}")
                    epoch_loss = running / max(1, n)
                stop_if_nonfinite(epoch_loss, f"{label} distillation", epoch)
                acc = timed_accuracy(student, test_loader)
                print(f"[{label}] epoch={epoch} kl={epoch_loss:.4f} test_acc={acc:.4%}", flush=True)
                report["epochs"][key].append(epoch_entry(epoch, "kl", epoch_loss, acc, box["seconds"]))
            return acc

        print("Training teacher...", flush=True)
        report["epochs"]["teacher"] = []
        train_teacher(teacher, train_loader, test_loader, args.epochs_teacher)
        ctx["final"]["teacher"] = timed_accuracy(teacher, test_loader)
        print(f"Teacher final test accuracy: {ctx['final']['teacher']:.4%}", flush=True)

        print("Distilling students on noise...", flush=True)
        for key, label, model in arms:
            report["epochs"][key] = []
            if args.epochs_distill == 0:
                ctx["final"][key] = timed_accuracy(model, test_loader)
                continue
            ctx["final"][key] = distill_subliminal(model, teacher, rand_loader, test_loader, args.epochs_distill,
                                                   T, key, label)
        report["optimizer_steps"] = {"teacher": steps_per_epoch * args.epochs_teacher,
                                     "distill_ghosts": steps_per_epoch * args.epochs_distill * n_arms}
        report["config"]["arms"] = "sequential"
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Variant 2: the same experiment, the fast way.


@contextlib.contextmanager
def preserved_state(models, opt, reset):
    """Runs warm-up training steps (compilation, CUDA graph capture) without their effect: the
    weights are copied back in place and the Adam state zeroed in place (exp_avg, exp_avg_sq, step —
    a zero step count is a fresh Adam), so the timed run starts from the same state as an eager one
    and captured graphs keep pointing at the same tensors; and the random generators are set back,
    so the warm-ups' shuffles and noise do not move the run's."""
    params = [p for m in models for p in m.parameters()]
    snapshot = [p.detach().clone() for p in params]
    on_cuda = any(p.is_cuda for p in params)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if on_cuda else None
    try:
        yield
    finally:
        if on_cuda:
            torch.cuda.synchronize()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            try:
                torch.cuda.set_rng_state(cuda_rng)
            except RuntimeError as e:  # a PyTorch that refuses it once a graph holds the generator
                note(f"the CUDA generator's state could not be set back after the warm-up ({e}); "
                     "the run's noise follows the warm-up's draws")
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)
            for state in opt.state.values():
                for v in state.values():
                    if torch.is_tensor(v):
                        v.zero_()
            reset()
        if any(p.is_cuda for p in params):
            torch.cuda.synchronize()


class GraphedStep:
    """One training step body(bs) captured as a CUDA graph per batch size.

    body(bs) must do everything on the device with no host sync (gather the batch from device
    buffers, or torch.rand for the noise — PyTorch's graph-safe Philox gives fresh numbers on every
    replay), then zero_grad(set_to_none) / backward / optimizer.step (Adam with capturable=True).
    The warm-up iterations that capture needs leave no trace (preserved_state).
    """

    def __init__(self, body, sizes, models, opt, reset, warmup=3):
        self.graphs = {}
        with preserved_state(models, opt, reset):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    for bs in sizes:
                        body(bs)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            for bs in sizes:
                g = torch.cuda.CUDAGraph()
                opt.zero_grad(set_to_none=True)
                with torch.cuda.graph(g):
                    body(bs)
                self.graphs[bs] = g

    def replay(self, bs):
        self.graphs[bs].replay()


class FastRun:
    """The fast variant: the data on the device as two tensors, normalised once; each step gathers
    its batch by index (the teacher) or draws its noise with torch.rand (the students), on the
    device; optionally each step captured as a CUDA graph (--cuda-graphs) or its loss and Adam step
    torch.compile'd (--compile). One object holds what the phases share."""

    def __init__(self, args, ctx):
        self.args, self.ctx = args, ctx
        self.device, self.clock, self.report = ctx["device"], ctx["clock"], ctx["report"]
        self.graphs = args.cuda_graphs
        self.ghosts = slice(N_CLASSES, N_CLASSES + args.ghosts)

        t0 = time.perf_counter()
        arrays = load_mnist_arrays(ctx["data_dir"])
        self.Xtr, self.Ytr = self.to_device(arrays["train_images"], arrays["train_labels"])
        self.Xte, self.Yte = self.to_device(arrays["test_images"], arrays["test_labels"])
        self.clock.sync()
        self.report["seconds"]["load"] = time.perf_counter() - t0
        self.report["data"]["pipeline"] = "tensors on the device, normalised once"
        # An epoch: full batches, then the remainder (the last, smaller batch); a captured graph
        # or a compiled step per batch size.
        self.N = self.Xtr.shape[0]
        self.full_steps, self.rem = divmod(self.N, args.batch_size)
        self.steps_per_epoch = self.full_steps + (1 if self.rem else 0)
        # (No full batch at all where --batch-size is over the training set: only the remainder.)
        self.sizes = ([args.batch_size] if self.full_steps else []) + ([self.rem] if self.rem else [])

    def to_device(self, images, labels):
        """ToTensor() then Normalize((0.5,), (0.5,)), in the same float32 operations, once."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).reshape(len(images), IMAGE_PIXELS)
        x = x.to(torch.float32).div(255).sub(0.5).div(0.5).contiguous()
        y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        return x, y

    @torch.inference_mode()
    def accuracy(self, model):
        t = time.perf_counter()
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, self.Xte.shape[0], 10000):
            pred = model(self.Xte[i:i + 10000])[:, :N_CLASSES].argmax(dim=-1)
            correct += (pred == self.Yte[i:i + 10000]).sum()
        acc = correct.item() / self.Xte.shape[0]
        model.train()
        self.report["seconds"]["eval"] += time.perf_counter() - t
        return acc

    def divergence(self, log_q, t_over_T):
        """The students' loss per --divergence, batch mean, from the student's log_softmax and the
        teacher's logits / T: KL(p ‖ q) as the notebook writes it, or js_divergence."""
        if self.args.divergence == "kl":
            return F.kl_div(log_q, F.softmax(t_over_T, dim=-1), reduction="batchmean")
        return js_divergence(log_q, F.log_softmax(t_over_T, dim=-1))

    def adam(self, params):
        kw = {"lr": self.args.lr}
        if self.graphs:
            kw["capturable"] = True
        return torch.optim.Adam(params, **kw)

    def step_functions(self, loss_fn, opt):
        """{"loss": loss_fn, "step": opt.step}, both torch.compile'd with --compile (static shapes:
        the full and the last batch get a graph each)."""
        if not self.args.compile:
            return {"loss": loss_fn, "step": opt.step}

        @torch.compile(fullgraph=False, dynamic=False, mode=self.args.compile_mode)
        def step():
            opt.step()

        return {"loss": torch.compile(loss_fn, dynamic=False, mode=self.args.compile_mode), "step": step}

    def add_seconds(self, key, seconds):
        self.report["seconds"][key] = self.report["seconds"].get(key, 0.0) + seconds

    def compile_warmup(self, body, models, opt, reset, fns, eager, what):
        """Compiles (one step of every batch size, undone afterwards); on failure notes it and goes eager."""
        t_c = time.perf_counter()
        try:
            with preserved_state(models, opt, reset):
                for bs in self.sizes:
                    body(bs)
        except Exception as e:  # noqa: BLE001 — report it and carry on eagerly
            print(f"torch_subliminal: warning: torch.compile of the {what} step failed ({type(e).__name__}: "
                  f"{str(e)[:500]}); running that phase eagerly", file=sys.stderr, flush=True)
            self.report.setdefault("compile_failed", {})[what] = f"{type(e).__name__}: {str(e)[:2000]}"
            fns.update(eager)
        self.add_seconds("compile_" + what, time.perf_counter() - t_c)

    def capture(self, body, models, opt, reset, what):
        """GraphedStep(...), or None after a failed capture (noted in the report; eager from then on)."""
        t_cap = time.perf_counter()
        try:
            g = GraphedStep(body, self.sizes, models, opt, reset)
        except Exception as e:  # noqa: BLE001 — report it and carry on eagerly
            print(f"torch_subliminal: warning: CUDA graph capture of the {what} step failed ({type(e).__name__}: "
                  f"{e}); running that phase eagerly", file=sys.stderr, flush=True)
            self.report.setdefault("cuda_graphs_failed", {})[what] = f"{type(e).__name__}: {e}"
            return None
        self.add_seconds("capture_" + what, time.perf_counter() - t_cap)
        return g

    def replay_epoch(self, graphed):
        for _ in range(self.full_steps):
            graphed.replay(self.args.batch_size)
        if self.rem:
            graphed.replay(self.rem)

    def train_teacher(self, teacher):
        args, device, B, N = self.args, self.device, self.args.batch_size, self.N
        print("Training teacher...", flush=True)
        opt = self.adam(teacher.parameters())

        def ce_first10(x, y):
            return F.cross_entropy(teacher(x)[:, :N_CLASSES], y)

        fns = self.step_functions(ce_first10, opt)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.report["epochs"]["teacher"] = []

        def teacher_step(x, y):
            loss = fns["loss"](x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            fns["step"]()
            loss_sum.add_(loss.detach().double() * x.shape[0])

        if self.graphs and args.epochs_teacher > 0:
            # The graph's batch comes from device buffers: the epoch's permutation and the batch
            # number, which the step itself advances.
            perm = torch.randperm(N, device=device)
            batch_index = torch.zeros((), dtype=torch.int64, device=device)
            offsets = torch.arange(B, device=device)

            def teacher_body(bs):
                idx = perm.index_select(0, batch_index * B + offsets[:bs])
                teacher_step(self.Xtr.index_select(0, idx), self.Ytr.index_select(0, idx))
                batch_index.add_(1)

            def teacher_reset():
                loss_sum.zero_()
                batch_index.zero_()

        graphed = None
        for epoch in range(1, args.epochs_teacher + 1):
            with self.clock.phase("teacher", self.steps_per_epoch, cold=epoch == 1) as box:
                if self.graphs and epoch == 1:
                    graphed = self.capture(teacher_body, [teacher], opt, teacher_reset, "teacher")
                if graphed is not None:
                    perm.copy_(torch.randperm(N, device=device))
                    batch_index.zero_()
                    loss_sum.zero_()
                    self.replay_epoch(graphed)
                else:
                    if args.compile and epoch == 1:
                        self.compile_warmup(lambda bs: teacher_step(self.Xtr[:bs], self.Ytr[:bs]), [teacher], opt,
                                            loss_sum.zero_, fns, {"loss": ce_first10, "step": opt.step}, "teacher")
                    loss_sum.zero_()
                    perm_e = torch.randperm(N, device=device)
                    for s in range(self.steps_per_epoch):
                        idx = perm_e[s * B:(s + 1) * B]
                        teacher_step(self.Xtr[idx], self.Ytr[idx])
                epoch_loss = loss_sum.item() / N
            stop_if_nonfinite(epoch_loss, "teacher training", epoch)
            acc = self.accuracy(teacher)
            print(f"[Teacher] epoch={epoch} loss={epoch_loss:.4f} test_acc={acc:.4%}", flush=True)
            self.report["epochs"]["teacher"].append(epoch_entry(epoch, "loss", epoch_loss, acc, box["seconds"]))

    def distill(self, teacher, group, arm_count):
        """Trains the arms of `group` [(key, label, model)] together, one Adam over their parameters,
        each step on one noise batch that all of them and the teacher see. Returns the optimizer steps."""
        args, device, T = self.args, self.device, self.args.temperature
        models = [m for _, _, m in group]
        opt = self.adam([p for m in models for p in m.parameters()])
        kl_sums = torch.zeros(len(group), dtype=torch.float64, device=device)

        def kl_losses(x):
            with torch.no_grad():
                t_logits = teacher(x)[:, self.ghosts]
            losses = [self.divergence(F.log_softmax(m(x)[:, self.ghosts] / T, dim=-1), t_logits / T) * (T * T)
                      for m in models]
            return torch.stack(losses)

        dfns = self.step_functions(kl_losses, opt)

        def distill_body(bs):
            x = torch.rand(bs, IMAGE_PIXELS, device=device) * 2 - 1
            losses = dfns["loss"](x)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            dfns["step"]()
            kl_sums.add_(losses.detach().double() * bs)

        graphed = None
        for epoch in range(1, args.epochs_distill + 1):
            steps = self.steps_per_epoch * len(group) / arm_count  # an arm trained alone counts its share
            with self.clock.phase("distill_ghosts", steps, cold=epoch == 1) as box:
                if self.graphs and epoch == 1:
                    graphed = self.capture(distill_body, models, opt, kl_sums.zero_, "distill")
                if args.compile and epoch == 1:
                    self.compile_warmup(distill_body, models, opt, kl_sums.zero_, dfns,
                                        {"loss": kl_losses, "step": opt.step}, "distill")
                kl_sums.zero_()
                if graphed is not None:
                    self.replay_epoch(graphed)
                else:
                    for s in range(self.steps_per_epoch):
                        distill_body(min(args.batch_size, self.N - s * args.batch_size))
                epoch_kl = (kl_sums / self.N).tolist()
            for (key, label, model), kl in zip(group, epoch_kl):
                stop_if_nonfinite(kl, f"{label} distillation", epoch)
                acc = self.accuracy(model)
                # As the app: KL with the notebook's four decimals, JS (~1e-4) with significant digits.
                loss = f"{kl:.4f}" if args.divergence == "kl" else f"{kl:.3e}"
                print(f"[{label}] epoch={epoch} {args.divergence}={loss} test_acc={acc:.4%}", flush=True)
                self.report["epochs"][key].append(epoch_entry(epoch, args.divergence, kl, acc, box["seconds"]))
                self.ctx["final"][key] = acc
        return self.steps_per_epoch * len(group) * args.epochs_distill


def run_fast(args, ctx):
    teacher, student, control, final = ctx["teacher"], ctx["student"], ctx["control"], ctx["final"]
    run = FastRun(args, ctx)
    report = run.report
    final["reference"] = run.accuracy(teacher)

    run.train_teacher(teacher)
    teacher_epochs = report["epochs"]["teacher"]
    final["teacher"] = teacher_epochs[-1]["test_acc"] if teacher_epochs else final["reference"]
    print(f"Teacher final test accuracy: {final['teacher']:.4%}", flush=True)

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    arms = [("student", "Student", student)]
    if control is not None:
        arms.append(("cross_init", "Cross-init", control))
    for key, _, _ in arms:
        report["epochs"][key] = []
    print("Distilling students on noise...", flush=True)
    if args.epochs_distill == 0:
        for key, _, model in arms:
            final[key] = run.accuracy(model)
        report["optimizer_steps"] = {"teacher": run.clock.steps.get("teacher", 0), "distill_ghosts": 0}
        return

    # --arms together (the app's way): student and control in one step; sequential: one, then the other.
    groups = [arms] if args.arms == "together" else [[a] for a in arms]
    report["config"]["arms"] = args.arms
    opt_steps = sum(run.distill(teacher, group, len(arms)) for group in groups)
    report["optimizer_steps"] = {"teacher": run.clock.steps.get("teacher", 0), "distill_ghosts": opt_steps}


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    """Parses and checks `argv` (after import torch: as a script, __main__ does it before) and runs."""
    args = parse_args(argv)
    check_inputs(args)
    return checked_run(args)


def checked_run(args):
    check_torch_args(args)
    return run(args)


def check_torch_args(args):
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        die("--device cuda: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})", 2)
    if args.cuda_graphs and args.device != "cuda":
        die("--cuda-graphs needs --device cuda (no GPU found for --device auto)")
    if args.compile and not hasattr(torch, "compile"):
        die(f"--compile needs torch ≥ 2.0 (this is {torch.__version__})")


def new_report(args, device, dev_name, threads, cross_init):
    """The JSON report's fields known before training, in the app's schema; run() adds the rest."""
    report = {
        "framework": f"pytorch {torch.__version__}",
        "variant": args.variant + ("+compile" if args.compile else "") + ("+cuda-graphs" if args.cuda_graphs else ""),
        "config": {
            "preset": "notebook", "seed": args.seed, "models": 1, "ghosts": args.ghosts,
            "hidden": args.hidden_sizes, "batch_size": args.batch_size, "lr": args.lr,
            "epochs_teacher": args.epochs_teacher, "epochs_distill": args.epochs_distill,
            # As the app: the init scheme (weights loaded from a file are named by load_init, the
            # file's resolved path, "" when none).
            "temperature": args.temperature, "divergence": args.divergence, "init": "torch",
            "load_init": os.path.realpath(args.load_init) if args.load_init else "",
            "noise": "uniform", "noise_set": "fresh", "weight_decay": 0.0,
            "init_perturb": 0.0, "cross_init": cross_init, "control_seed": args.control_seed,
            "all_logit_arms": False, "tf32": args.tf32, "cuda_graphs": args.cuda_graphs,
            "compile": args.compile, "compile_mode": args.compile_mode if args.compile else None,
            "threads": threads, "train_samples": 0, "eval_every_epoch": True,
        },
        "device": {"kind": device.type, "name": dev_name, "threads": threads, "cpu": cpu_model(),
                   "torch": torch.__version__, "python": platform.python_version()},
        "data": {"dir": args.data_dir},
        # As the app's report: the command line's words and when the run began (UTC).
        "command": [sys.executable] + sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T_START_WALL)),
        "epochs": {},
        "seconds": {"import": T_IMPORTED - T_START, "load": 0.0, "eval": 0.0},
    }
    if device.type == "cuda":
        report["device"]["cuda"] = torch.version.cuda
        report["device"]["capability"] = list(torch.cuda.get_device_capability(device))
    return report


def add_timings(report, clock, device):
    """The report's seconds, steps and µs per step from the clock, as the app's report has them."""
    secs = report["seconds"]
    for phase, s in clock.wall.items():
        secs[phase] = s
    secs.setdefault("teacher", 0.0)
    secs.setdefault("distill_ghosts", 0.0)
    secs["training"] = secs["teacher"] + secs["distill_ghosts"]
    report["steps"] = {k: int(round(v)) for k, v in clock.steps.items()}
    for phase in ("teacher", "distill_ghosts"):  # a phase of 0 epochs ran 0 steps (the app leaves
        report["steps"].setdefault(phase, 0)     # a 0-epoch distillation out; compare.py takes both)
    report["us_per_step"] = {}
    for phase, n in clock.steps.items():
        if n:
            t = clock.gpu[phase] if device.type == "cuda" else clock.wall[phase]
            report["us_per_step"][phase] = 1e6 * t / n
    # steady state: the time of the epochs after the first of each loop (no compilation, graph
    # capture or cold caches in them), per step — GPU time on cuda, wall time on the CPU, as the app
    report["us_per_step_steady"] = {ph: 1e6 * w[0] / w[1] for ph, w in clock.warm.items() if w[1]}
    # the steps those times cover, whole as the app's (an arm trained alone counted steps / arms)
    report["steps_steady"] = {ph: int(round(w[1])) for ph, w in clock.warm.items() if w[1]}
    if device.type == "cuda":
        report["gpu_seconds"] = dict(clock.gpu)
        report["gpu_seconds"]["training"] = sum(clock.gpu.values())


def run(args):
    data_dir = args.data_dir

    threads = args.threads if args.threads > 0 else usable_cores()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    device = torch.device(args.device)

    # ---- the notebook's setup: seed, teacher, student (an exact copy), and the control
    torch.manual_seed(args.seed)
    sizes = (IMAGE_PIXELS, *args.hidden_sizes, N_CLASSES + args.ghosts)
    teacher = MLP(sizes)
    student = MLP(sizes)
    if args.init_tensors is not None:
        load_init_into(teacher, args.init_tensors)
    student.load_state_dict(teacher.state_dict())  # start with the same init
    control = None if args.no_cross_init else make_control(sizes, args.control_seed)
    teacher, student = teacher.to(device), student.to(device)
    if control is not None:
        control = control.to(device)

    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({threads} threads, {cpu_model()})"
    print(f"torch_subliminal: {args.variant} variant, pytorch {torch.__version__}, MNIST from {data_dir} on {dev_name}",
          flush=True)

    report = new_report(args, device, dev_name, threads, control is not None)
    clock = Clock(device)
    ctx = {"device": device, "sizes": sizes, "clock": clock, "report": report, "data_dir": data_dir,
           "teacher": teacher, "student": student, "control": control, "final": {}}

    if args.variant == "faithful":
        run_faithful(args, ctx)
    else:
        run_fast(args, ctx)

    final = ctx["final"]
    print(f"\nSummary ({args.variant}, seed {args.seed}, {dev_name}):")
    names = {"reference": "reference (untrained init)", "teacher": "teacher",
             "student": "student (same init, ghost logits)", "cross_init": "cross-init control (ghost logits)"}
    for key in ("reference", "teacher", "student", "cross_init"):
        if key in final:
            report[key] = stats_json([final[key]])
            print(f"  {names[key]:<36} {100 * final[key]:.2f}%")

    add_timings(report, clock, device)
    secs = report["seconds"]
    secs["total"] = time.perf_counter() - T_START
    print(f"Time: {secs['total']:.1f} s total (import {secs['import']:.1f} s, data {secs['load']:.1f} s, "
          f"teacher {secs['teacher']:.1f} s, distillation {secs['distill_ghosts']:.1f} s, "
          f"evaluation {secs['eval']:.1f} s)", flush=True)
    if args.json:
        write_json_atomically(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(checked_run(ARGS))  # ARGS: parsed and checked at the top, before import torch
