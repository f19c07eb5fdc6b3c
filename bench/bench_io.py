"""bench/bench_io.py — what the bench scripts take in and write out, checked, without torch.

  argparse types   whole numbers in a range, finite positive numbers, seeds, thread counts, hidden
                   widths, output files — each refuses a bad value with one line (exit 2 by argparse)
  MNIST            where the IDX files are (an explicit --data or a set $MNIST_DIR is a promise: no
                   fallback elsewhere) and what a readable copy looks like
  safetensors      the app's --save-init files, read and checked against an MLP's shapes
  JSON             read with one-line refusals also for what json.loads takes but the tools cannot
                   use (an integer beyond a float's range, nesting past the recursion limit);
                   written strict (NaN and infinities as null)
  outputs          why a path cannot be written, checked before any work; JSON written atomically
                   (a temporary file beside the target, removed on any failure)

Every check raises ValueError (argparse.ArgumentTypeError inside the types) with one line that
names the file or value and what is wrong; the scripts print it as `script: error: …` and exit 2.
numpy is imported only by the functions that read data, so compare.py can use the rest on a
machine without it.
"""
import argparse
import gzip
import json
import math
import os
import re
import struct
import sys
import tempfile
import zlib

MAX_THREADS = 1024      # the engine's --threads range is 0..1024 (0: all usable cores)
MAX_WIDTH = 65536       # the engine's largest --hidden width
MAX_SEED = 2**64 - 1    # the engine's seeds and torch.manual_seed take 0 .. 2^64 - 1
MAX_EPOCHS = 100000     # the engine's --epochs-* range
MAX_GHOSTS = 100000     # the engine's --ghosts range (its lower bound is 2)
MAX_BATCH = 1 << 24     # the engine's --batch-size range

IMAGE_PIXELS = 28 * 28
N_CLASSES = 10
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FETCH_HINT = "fetch it with scripts/fetch_mnist.sh DIR"


def shown(text):
    """`text` as it can stand in a one-line message: itself, or its repr() when it holds a line
    break or another unprintable character."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def glued_flag_value(argv, flag):
    """argv with `flag VALUE` written as `flag=VALUE`: argparse takes a lone value that starts with
    "-" (--engine-args --no-graphs) for a flag of its own and refuses it; glued, it is the value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            out.append(f"{flag}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


# ---------------------------------------------------------------------------------------------- argparse types


def plain_number_text(text):
    """Whether `text` is written as the app reads numbers: no blanks around it (" 3e-4"), no
    digit-group underscores ("1_000") and no digits outside ASCII ("５"), which Python's int() and
    float() accept and the app refuses. The same command line must mean the same run in both."""
    return text == text.strip() and "_" not in text and text.isascii()


def whole_number_text(text):
    """Whether `text` is a whole number as the app reads one (std::from_chars): ASCII digits after
    an optional '-', no '+' (which int() takes)."""
    return plain_number_text(text) and re.fullmatch(r"-?[0-9]+", text) is not None


def int_type(lo, hi=None, note=""):
    """An argparse type: a whole number in lo..hi (hi None: no upper bound)."""
    span = f"from {lo} up" if hi is None else f"from {lo} to {hi}"

    def parse(text):
        try:
            value = int(text, 10) if whole_number_text(text) else None
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected a whole number {span}{note}, got {shown(text)!s}")
        return value

    parse.__name__ = "whole number"
    return parse


def float_type(minimum=0.0, inclusive=False, maximum=math.inf, expected=None):
    """An argparse type: a finite number > minimum (≥ with inclusive) and ≤ maximum; `expected`
    words the refusal (default: "a finite number > minimum")."""
    expected = expected or f"a finite number {'≥' if inclusive else '>'} {minimum:g}"

    def parse(text):
        try:
            value = float(text) if plain_number_text(text) else None
        except ValueError:
            value = None
        if (value is None or not math.isfinite(value) or value < minimum or (value == minimum and not inclusive)
                or value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown(text)!s}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_type(1)
non_negative_int = int_type(0)
positive_float = float_type(0.0)

FLOAT32_MIN_NORMAL = 1.1754943508222875e-38  # below it a float32 the run computes with acts as 0
FLOAT32_MAX = 3.4028234663852886e38          # above it the float32 is Inf
# A setting the run computes with in float32 (--lr, --temperature): float32's smallest normal to
# its largest, the range the app accepts, in its words, so that one command line is one run in both.
float32_positive = float_type(FLOAT32_MIN_NORMAL, inclusive=True, maximum=FLOAT32_MAX,
                              expected="a number > 0 that float32 holds (1.18e-38 to 3.4e38)")
# Adam's first step is lr / (1 − β₁) = 10·lr, which torch computes as a float32: a larger lr is a
# RuntimeError inside optimizer.step(), so it is refused here instead.
adam_lr = float_type(FLOAT32_MIN_NORMAL, inclusive=True, maximum=FLOAT32_MAX / 10,
                     expected="a number > 0 up to 3.4e37 (Adam's first step, 10 × lr, must be a float32)")
threads_type = int_type(0, MAX_THREADS, " (0: all usable cores)")
seed_type = int_type(0, MAX_SEED)
epochs_type = int_type(0, MAX_EPOCHS)
ghosts_type = int_type(2, MAX_GHOSTS)  # one ghost logit gets no gradient (REFERENCE.md)


def hidden_widths(text):
    """An argparse type: comma-separated hidden widths, each 1..MAX_WIDTH, at least one."""
    widths = []
    for part in text.split(","):
        try:
            w = int(part, 10) if whole_number_text(part) else None
        except ValueError:
            w = None
        if w is None or not 1 <= w <= MAX_WIDTH:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated layer widths from 1 to {MAX_WIDTH} (e.g. 256,256), got {shown(text)}")
        widths.append(w)
    return widths


hidden_widths.__name__ = "widths"


def stop_quietly_on_sigint(prog, what):
    """Ctrl-C prints one line, `prog: interrupted: what`, and exits 130 (as a shell reports a
    SIGINT), where Python would print a KeyboardInterrupt traceback; atexit handlers still run."""
    import signal

    def on_sigint(_signum, _frame):
        print(f"{prog}: interrupted: {what}", file=sys.stderr)
        sys.exit(130)

    signal.signal(signal.SIGINT, on_sigint)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser as the project's tools need it: a usage error is one line on stderr
    (argparse prints the usage block first), and an option given twice is refused where argparse
    lets the last one win silently (`--engine A --engine B` ran B)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")

    def parse_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        seen = set()
        for word in argv:
            if word == "--":
                break
            flag = word.split("=", 1)[0]
            action = self._option_string_actions.get(flag)
            if action is None or isinstance(action, (argparse._AppendAction, argparse._HelpAction)):
                continue  # a value (which may start with '-'), or an option meant to repeat
            if action.dest in seen:
                self.error(f"{flag} is given twice; give it once")
            seen.add(action.dest)
        return super().parse_args(argv, namespace)


def output_file_problem(path):
    """Why `path` cannot be written as an output file (one line), or None when it can. A link is
    followed: the file it points at is what gets written."""
    if path.endswith("/"):
        return "names a directory (it ends with /)"
    target = os.path.realpath(path)
    if os.path.isdir(target):
        return "is a directory"
    if os.path.lexists(target) and not os.path.isfile(target):
        return "exists and is not a regular file"
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return f"directory {shown(parent)} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {shown(parent)} is not writable"
    # What the final write does, tried now (/proc passes the access() check as root, then refuses).
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".tmp-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot create a file in {shown(parent)} ({e.strerror or e})"
    # The atomic rename needs only the directory's permission: a read-only file would be replaced
    # unasked (root's access() allows anything, hence the mode bits too).
    if os.path.isfile(target) and (not os.stat(target).st_mode & 0o222 or not os.access(target, os.W_OK)):
        return "is read-only; refusing to replace it (make it writable, or choose another name)"
    return None


def output_file(text):
    """An argparse type: a file the script may write (see output_file_problem); "" passes (unset)."""
    if text:
        why = output_file_problem(text)
        if why:
            raise argparse.ArgumentTypeError(f"{shown(text)}: {why}")
    return text


output_file.__name__ = "output file"


def output_dir_problem(path):
    """Why `path` cannot be used as an output directory, made with its parents where missing, or None."""
    p = os.path.abspath(path)
    if os.path.lexists(p) and not os.path.isdir(p):
        return "exists and is not a directory"
    q = p
    while not os.path.lexists(q):
        q = os.path.dirname(q)
    if not os.path.isdir(q):
        return f"{shown(q)} is not a directory"
    if not os.access(q, os.W_OK | os.X_OK):
        return f"directory {shown(q)} is not writable"
    return None


def same_file(a, b):
    """Whether two paths name the same file (after links), for refusing an output that would
    overwrite an input."""
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def json_over_data(path, data_dir, readers="the run reads"):
    """Why --json `path` may not be written, when it names (after links) one of data_dir's MNIST
    files — a report there would overwrite the data every later run reads; else None."""
    if not path or not data_dir:
        return None
    for base in MNIST_FILES.values():
        for name in (base, base + ".gz"):
            f = os.path.join(data_dir, name)
            if os.path.exists(f) and same_file(path, f):
                return f"--json {shown(path)} is {shown(f)}, a file {readers}: the report would overwrite it"
    return None


class UnreadableJSON(ValueError):
    """JSON text the tools refuse although it parses: its message is the whole reason (not "not JSON")."""


def _json_int(text):
    """json's parser for integers, refusing one beyond a float's range (~1.8e308): every number the
    tools read ends up in float arithmetic or a float format, where such an integer raises
    OverflowError, not the ValueError the scripts turn into one line. float() of the digits says
    it without int()'s own limit of 4300 digits."""
    if not math.isfinite(float(text)):
        raise UnreadableJSON(f"holds an integer of {len(text.lstrip('-'))} digits, beyond a float's range")
    return int(text)


def _object_once(pairs):
    """json's object hook refusing a name given twice in one object (json keeps the last; another
    reader may keep the first, and so read another file)."""
    names = set()
    for name, _ in pairs:
        if name in names:
            raise UnreadableJSON(f"names {json.dumps(name)} twice")
        names.add(name)
    return dict(pairs)


def parse_json(text, names_once=False):
    """json.loads for text from outside: besides json's ValueError for what is not JSON, raises
    UnreadableJSON for an integer beyond a float's range and for a document nested deeper than the
    parser's recursion limit (json raises RecursionError there, which no caller expects), and,
    with names_once, for an object naming a member twice."""
    try:
        return json.loads(text, parse_int=_json_int, object_pairs_hook=_object_once if names_once else None)
    except RecursionError:
        raise UnreadableJSON("is nested too deeply to read (arrays or objects within each other "
                             "past Python's recursion limit)") from None


def is_finite_number(v):
    """A JSON number (not a bool) with a finite float value; an integer too large for a float is
    not one (math.isfinite would raise OverflowError on it)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def read_json(path, problem=None):
    """The JSON value in `path`; ValueError naming the file when it cannot be read, is not JSON, is
    JSON the tools cannot use (see parse_json), or (given `problem`, a function returning why a
    value will not do, or None) is not what is wanted."""
    try:
        with open(path, encoding="utf-8") as f:
            value = parse_json(f.read())
    except OSError as e:
        raise ValueError(f"{shown(path)}: cannot read it ({e.strerror or e})") from None
    except UnreadableJSON as e:
        raise ValueError(f"{shown(path)}: {e}") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise ValueError(f"{shown(path)}: not JSON ({str(e).splitlines()[0]})") from None
    why = problem(value) if problem else None
    if why:
        raise ValueError(f"{shown(path)}: {why}")
    return value


def replace_atomically(path, write):
    """Calls write(temporary path) for a temporary file beside `path` (after links), then renames it
    over `path`: a reader never sees half a file, and a failure leaves neither a half-written target
    nor the temporary file. Raises what `write` or the rename raises, after cleaning up."""
    target = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 → what open() would have given
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def finite_or_null(obj):
    """obj (dicts, lists, tuples of plain values) with every NaN or infinity replaced by None.
    json.dump writes them as the tokens NaN and Infinity, which are not JSON: jq, JavaScript and
    Python's own strict readers refuse the whole file. null is how the app writes a NaN too."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def write_json_atomically(path, obj):
    """Writes `obj` as strict JSON (non-finite numbers as null) to `path` through replace_atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(finite_or_null(obj), f, indent=2, allow_nan=False)
            f.write("\n")

    replace_atomically(path, write)


# ---------------------------------------------------------------------------------------------- MNIST


def idx_path(directory, base):
    """The file for `base` in `directory`: raw if present, else .gz; None if neither. Something
    else at either name (a directory, a FIFO, a link to nothing) is a ValueError naming it: not
    "missing", and not read past to the other name (a FIFO would block the read)."""
    for name in (base, base + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
        if os.path.lexists(p):
            why = "a symbolic link to nothing" if os.path.islink(p) and not os.path.exists(p) else "not a regular file"
            raise ValueError(f"{shown(p)}: {why}")
    return None


def why_not_mnist(directory):
    """Why `directory` does not hold the four MNIST files (e.g. "no such directory"); None when it does."""
    if not os.path.isdir(directory):
        return "not a directory" if os.path.lexists(directory) else "no such directory"
    missing = [b + "[.gz]" for b in MNIST_FILES.values() if not idx_path(directory, b)]
    if len(missing) == len(MNIST_FILES):
        return "none of the four MNIST files"
    return "missing " + ", ".join(missing) if missing else None


def default_data_dirs(repo):
    """Where MNIST is looked for when neither --data nor $MNIST_DIR names a place."""
    return ["data/mnist", os.path.join(repo, "data", "mnist"), os.path.join(repo, "shared", "mnist"),
            os.path.join(os.path.dirname(repo), "shared", "mnist"),
            os.path.expanduser("~/.pytorch/MNIST_data/MNIST/raw")]


def locate_mnist(data_dir, repo):
    """The directory holding the four IDX files (raw or .gz; DIR or DIR/MNIST/raw). An explicit
    --data or a set $MNIST_DIR must hold them: a typo does not quietly read another copy.
    Raises ValueError with one line."""

    def holds(d):
        for sub in (d, os.path.join(d, "MNIST", "raw")):
            if why_not_mnist(sub) is None:
                return os.path.abspath(sub)
        return None

    if data_dir:
        found = holds(data_dir)
        if found:
            return found
        raise ValueError(f"--data {shown(data_dir)}: does not hold MNIST ({why_not_mnist(data_dir)}); {FETCH_HINT}")
    env = os.environ.get("MNIST_DIR")
    if env:
        found = holds(env)
        if found:
            return found
        raise ValueError(f"$MNIST_DIR={shown(env)}: does not hold MNIST ({why_not_mnist(env)}); {FETCH_HINT}, "
                         "or unset MNIST_DIR to search ./data/mnist, shared/mnist and ~/.pytorch/MNIST_data/MNIST/raw")
    places = default_data_dirs(repo)
    for d in places:
        found = holds(d)
        if found:
            return found
    raise ValueError(f"MNIST not found ($MNIST_DIR not set; searched {', '.join(map(shown, places))}); "
                     f"{FETCH_HINT}, then pass --data DIR or set MNIST_DIR=DIR")


class gzip_errors:
    """Turns what reading a damaged .gz (or any unreadable file) raises into ValueError naming `name`."""

    def __init__(self, name):
        self.path, self.name = name, shown(name)

    def starts_as_gzip(self):
        try:
            with open(self.path, "rb") as f:
                return f.read(2) == b"\x1f\x8b"
        except OSError:
            return False

    def __enter__(self):
        return self

    def __exit__(self, kind, e, _tb):
        if kind is None:
            return False
        if isinstance(e, gzip.BadGzipFile):
            if self.starts_as_gzip():  # Python reads what follows a gzip member as another member
                raise ValueError(f"{self.name}: bytes after its gzip stream that are not gzip (a damaged file)") from None
            raise ValueError(f"{self.name}: not a gzip file (its name ends in .gz)") from None
        if isinstance(e, EOFError):
            raise ValueError(f"{self.name}: truncated (the gzip stream ends before its end marker)") from None
        if isinstance(e, zlib.error):
            raise ValueError(f"{self.name}: corrupt gzip data ({e})") from None
        if isinstance(e, OSError):
            raise ValueError(f"{self.name}: cannot read it ({e.strerror or e})") from None
        return False


def read_file_bytes(path):
    """The bytes of a file, gunzipped when its name ends in .gz; ValueError naming the file and the defect."""
    with gzip_errors(path):
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            return f.read()


def gunzip_to(src, dst):
    """Decompresses src into dst; ValueError naming src when it is not a whole gzip file."""
    import shutil

    with gzip_errors(src):
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)


def parse_idx_header(path, head, size):
    """(dims, header bytes) of an IDX file of unsigned bytes (named `path` in messages) whose first
    bytes are `head` and whose length is `size`; ValueError when the header is bad or the payload is
    not the size it says."""
    if size == 0:
        raise ValueError(f"{shown(path)}: empty (0 bytes), not an IDX file")
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ValueError(f"{shown(path)}: not an IDX file (bad magic)")
    if head[2] != 0x08:
        raise ValueError(f"{shown(path)}: IDX element type 0x{head[2]:02x}, expected unsigned byte (0x08)")
    ndim = head[3]
    header = 4 + 4 * ndim
    if size < header or len(head) < header:
        raise ValueError(f"{shown(path)}: truncated IDX header ({size} bytes, a {ndim}-dimensional header needs {header})")
    dims = struct.unpack(">" + "I" * ndim, head[4:header])
    count = math.prod(dims)
    if size - header != count:
        raise ValueError(f"{shown(path)}: holds {size - header} data bytes, its IDX header says {count}")
    return dims, header


def read_idx(path):
    """An IDX file (raw or .gz; big-endian header, unsigned-byte payload) as a writable numpy uint8
    array; ValueError naming the file and the defect."""
    import numpy as np

    raw = read_file_bytes(path)
    dims, header = parse_idx_header(path, raw[:4 + 4 * 255], len(raw))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, for torch


def idx_dims(path, name=None):
    """The dims of an uncompressed IDX file, after checking its header and size, reading only the
    header; messages call it `name` (default: path)."""
    name = name or path
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * 255)
        size = os.path.getsize(path)
    except OSError as e:
        raise ValueError(f"{shown(name)}: cannot read it ({e.strerror or e})") from None
    return parse_idx_header(name, head, size)[0]


def check_mnist_split(split, images_path, image_dims, labels_path, label_dims, labels):
    """ValueError when a split's images are not N×28×28, its labels not N digits 0..9. `labels`:
    the label bytes (a numpy array or a memoryview: no numpy needed)."""
    if len(image_dims) != 3 or tuple(image_dims[1:]) != (28, 28):
        raise ValueError(f"{shown(images_path)}: MNIST {split} images must be N×28×28, the file holds {tuple(image_dims)}")
    if len(label_dims) != 1 or label_dims[0] != image_dims[0]:
        raise ValueError(f"{shown(labels_path)}: holds labels of shape {tuple(label_dims)} for "
                         f"{image_dims[0]} {split} images; the counts must match")
    if len(labels) and max(labels) >= N_CLASSES:
        i = next(k for k, v in enumerate(labels) if v >= N_CLASSES)
        raise ValueError(f"{shown(labels_path)}: label {int(labels[i])} at index {i} is out of range 0..9")


def mnist_split_files(directory, split):
    """(images, labels) paths of a split; ValueError when either is missing."""
    ip, lp = idx_path(directory, MNIST_FILES[split + "_images"]), idx_path(directory, MNIST_FILES[split + "_labels"])
    if not ip or not lp:
        raise ValueError(f"{shown(directory)}: missing the MNIST {split} files")
    return ip, lp


def load_mnist_arrays(directory):
    """{train_images, train_labels, test_images, test_labels} as numpy uint8 arrays; ValueError
    naming the file and what is wrong with it. Labels are read first: they are small."""
    out = {}
    for split in ("train", "test"):
        ip, lp = mnist_split_files(directory, split)
        labels = read_idx(lp)
        images = read_idx(ip)
        check_mnist_split(split, ip, images.shape, lp, labels.shape, labels)
        out[split + "_images"], out[split + "_labels"] = images, labels
    return out


def check_mnist_files(directory):
    """load_mnist_arrays' checks without numpy (for compare.py, which reads no images itself but
    should refuse damaged data before its runs fail on it one by one): ValueError naming the file."""
    for split in ("train", "test"):
        ip, lp = mnist_split_files(directory, split)
        raw_labels = read_file_bytes(lp)
        label_dims, label_header = parse_idx_header(lp, raw_labels[:4 + 4 * 255], len(raw_labels))
        raw_images = read_file_bytes(ip)
        image_dims, _ = parse_idx_header(ip, raw_images[:4 + 4 * 255], len(raw_images))
        check_mnist_split(split, ip, image_dims, lp, label_dims, memoryview(raw_labels)[label_header:])


# ---------------------------------------------------------------------------------------------- safetensors


SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I32": "<i4", "I64": "<i8", "U8": "u1",
                      "I8": "i1", "I16": "<i2"}


def read_safetensors(path):
    """({name: numpy array}, metadata) — the safetensors format read with numpy (8-byte LE header
    length, JSON header, raw little-endian data). ValueError naming the file and the defect."""
    import numpy as np

    where = shown(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({e.strerror or e})") from None
    if len(raw) < 8:
        raise ValueError(f"{where}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{where}: not a safetensors file (header length {n} runs past the end of the file)")
    try:
        header = parse_json(raw[8:8 + n].decode("utf-8"), names_once=True)
    except UnreadableJSON as e:
        raise ValueError(f"{where}: not a safetensors file (its header {e})") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise ValueError(f"{where}: not a safetensors file (its header is not JSON: {str(e).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: not a safetensors file (its header is a JSON {type(header).__name__}, not an object)")
    base = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: __metadata__ is not a JSON object")
    tensors = {}
    for name, info in header.items():
        what = f"{where}: tensor {shown(name)}"
        if not isinstance(info, dict):
            raise ValueError(f"{what}: its entry is not a JSON object")
        if "dtype" not in info:
            raise ValueError(f"{what}: its entry has no dtype")
        dtype = SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"{what}: unsupported dtype {shown(info['dtype'])}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ValueError(f"{what}: shape {shown(shape)} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise ValueError(f"{what}: data_offsets {shown(offsets)} is not two non-negative integers")
        begin, end = offsets
        count = math.prod(shape)
        if end - begin != count * np.dtype(dtype).itemsize or base + end > len(raw):
            raise ValueError(f"{what}: offsets {begin}..{end} do not fit shape {tuple(shape)} / the file")
        tensors[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=base + begin).reshape(shape).copy()
    return tensors, metadata


def mlp_shapes(sizes):
    """{state_dict name: shape} of the benchmark's MLP (nn.Sequential of Linear, ReLU, …, Linear)."""
    shapes = {}
    for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        shapes[f"net.{2 * i}.weight"] = (d_out, d_in)
        shapes[f"net.{2 * i}.bias"] = (d_out,)
    return shapes


def check_init(tensors, sizes, path):
    """ValueError when a safetensors init does not hold exactly the MLP's parameters and shapes."""

    def few(names):
        return ", ".join(map(shown, names[:4])) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    want = mlp_shapes(sizes)
    missing = [k for k in want if k not in tensors]
    extra = [k for k in tensors if k not in want]
    if missing or extra:
        raise ValueError(f"{shown(path)}: its tensors are not this MLP's ({'missing ' + few(missing) if missing else ''}"
                         f"{'; ' if missing and extra else ''}{'extra ' + few(extra) if extra else ''}); "
                         "do --hidden and --ghosts match the file?")
    for k, shape in want.items():
        held = tuple(tensors[k].shape)
        if len(held) == len(shape) + 1 and held[1:] == shape:  # the app's --save-init with --models N
            raise ValueError(f"{shown(path)}: holds the init of {held[0]} models ({k} is {held}); "
                             "this program trains one: write its init with the app's --models 1")
        if held != shape:
            raise ValueError(f"{shown(path)}: {k} is {tuple(tensors[k].shape)}, this MLP's is {shape}; "
                             "do --hidden and --ghosts match the file?")
    # A NaN or Inf would train nonsense (the app refuses such a file too).
    import numpy as np

    for k in want:
        bad = np.flatnonzero(~np.isfinite(tensors[k]))
        if bad.size:
            raise ValueError(f"{shown(path)}: {k} holds a non-finite value ({tensors[k].flat[bad[0]]} at flat "
                             f"index {bad[0]})")
