#!/usr/bin/env python3
"""tests/test_references.py — what the docs, comments and scripts name exists.

Readers follow the names the text gives them: a file (`ops/cuda/tile_gemm.cuh`), a test
(`SweepResume.ASweepOverNoiseKeepsItsNoiseSet`), a flag (`--fused-split`). A rename that leaves one
behind sends them nowhere, and nothing else notices. Worse, a gtest filter in a script that no
longer matches any test runs zero tests and passes: `scripts/gpu_check.sh`'s one-minute cluster
smoke test would then clear the cluster runs on a GPU without having run anything. So this checks:

  1. every repository path written in a tracked text file (docs, sources, scripts) exists, or is
     one the project makes at setup or build time (GENERATED below, each with what makes it);
  2. every `Suite.Name` test written in backticks in README.md, bench/README.md and docs/*.md is
     a test of one of the test binaries (gtest's `*` and `?` allowed), or, in a build without the
     GPU or cuDNN suite, one that suite's sources declare;
  3. every pattern of every gtest filter in scripts/ and .ci/ matches at least one test (negative
     patterns too: one that excludes nothing is as stale); a filter for the GPU suite is checked
     only when this build has it;
  4. every `--flag` in README.md, bench/README.md and docs/*.md is one some program of the project
     takes: it appears in apps/, bench/ or scripts/ (as `--flag`, or as `"flag"`, the way the app
     declares its flags).

The test binaries' names come from `--gtest_list_tests` (parameterised instances included), so
it runs after the build: `ctest -R references`, or
    python3 tests/test_references.py -v build/tests/test_engine build/tests/test_ops ...
"""
import fnmatch
import glob
import os
import re
import subprocess
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = []  # test executables, from the command line

# Paths the text may name that are not in the repository, and what makes each.
GENERATED = {
    "data/mnist": "scripts/setup.sh copies or fetches MNIST there",
    "third_party/cudnn-frontend": "scripts/get_cudnn_frontend.sh unpacks the headers there",
}
# Flags the docs name on purpose although no program takes them.
NOT_FLAGS = {"--sedd": "docs/RELIABILITY.md's example of a misspelt flag"}
TOP_DIRS = "engine|ops|data|apps|tests|bench|scripts|docs|cmake|third_party|\\.ci"
# A path: a top-level folder, then at least one more part; not the tail of a longer path.
PATH_RE = re.compile(r"(?<![\w/.\-])((?:%s)/[\w.\-/*]*[\w*])" % TOP_DIRS)
# `Suite.Name`: two CamelCase identifiers (not `PREFIX.csv`, not SASS such as `CCTL.IVALL`).
TEST_RE = re.compile(r"`((?:\w+/)?[A-Z][a-z]\w*\.[A-Z][\w*?/]*)`")
FLAG_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]+)")
# A single-quoted shell word of gtest-pattern characters; a filter where it follows --gtest_filter=
# on its line, or is the argument of gpu_check.sh's sanitize() on the line after the call.
FILTER_RE = re.compile(r"'(-?[\w*?/.\-:]+)'")

USER_DOCS = ["README.md", "bench/README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


def project_files():
    """The repository's files: git's list in a checkout, else (a source tarball) a walk of the tree
    without what setup and builds add."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pass
    paths = [f for f in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, f))]
    for top in TOP_DIRS.replace("\\", "").split("|"):
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            rel = os.path.relpath(folder, REPO)
            dirs[:] = [d for d in dirs if os.path.join(rel, d) not in GENERATED and d != "__pycache__"]
            paths += [os.path.join(rel, f) for f in files]
    return paths


def tracked_text_files():
    """The project's files that are text we wrote (not measured results, images or data)."""
    for path in project_files():
        if path.startswith("docs/results/") or path.endswith((".png", ".gz", ".json")):
            continue
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                yield path, f.read()
        except (UnicodeDecodeError, IsADirectoryError):
            continue


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def test_binary_names():
    """The test targets CMake builds (tests/CMakeLists.txt's subliminal_test calls)."""
    return set(re.findall(r"subliminal_test\((\w+)", read("tests/CMakeLists.txt")))


def listed_tests(binary):
    """`Suite.Name` of every test in one binary, as gtest's own --gtest_list_tests prints them."""
    out = subprocess.run([binary, "--gtest_list_tests"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("%s --gtest_list_tests: exit %d\n%s" % (binary, out.returncode, out.stderr))
    names, suite = [], None
    for line in out.stdout.splitlines():
        if not line.strip() or line.startswith("Running main()"):
            continue
        entry = line.split("#")[0].strip()  # "  Name/0  # GetParam() = ..."
        if line.startswith(" "):
            names.append(suite + entry)
        else:
            suite = entry  # "Suite." or "Instance/Suite."
    return names


# The suites a build may leave out (the sanitizer builds have no CUDA, a machine without the
# cudnn-frontend headers no cuDNN engine), and their sources.
OPTIONAL_SUITES = {"test_cuda": "tests/test_cuda_*.cpp", "test_cudnn": "tests/test_cudnn.cpp"}


def declared_tests(sources):
    """`Suite.Name` of each test the sources declare: what a build without that suite checks the docs'
    names against (parameterised ones without their instance and parameter)."""
    names = []
    for path in sorted(glob.glob(os.path.join(REPO, sources))):
        with open(path, encoding="utf-8") as f:
            names += [s + "." + n for s, n in re.findall(r"\bTEST(?:_F|_P)?\(\s*(\w+)\s*,\s*(\w+)\s*\)", f.read())]
    return names


def gtest_match(pattern, name):
    """gtest's wildcard match: `*` any string, `?` one character, nothing else special."""
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


class References(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tests = {}  # binary name -> its tests
        for binary in BINARIES:
            cls.tests[os.path.basename(binary)] = listed_tests(binary)
        cls.all_tests = [t for names in cls.tests.values() for t in names]

    def test_paths_exist(self):
        binaries = test_binary_names()
        missing = []
        for path, text in tracked_text_files():
            for m in PATH_RE.finditer(text):
                ref = m.group(1)
                if ref.startswith("tests/") and ref[len("tests/"):] in binaries:
                    continue  # a test binary, built into build/tests/
                if any(ref == g or ref.startswith(g + "/") for g in GENERATED):
                    continue
                found = glob.glob(os.path.join(REPO, ref)) if "*" in ref else os.path.exists(os.path.join(REPO, ref))
                if not found:
                    line = text.count("\n", 0, m.start()) + 1
                    missing.append("%s:%d names %s, which does not exist" % (path, line, ref))
        self.assertEqual(missing, [], "\n" + "\n".join(missing))

    def test_named_tests_exist(self):
        if not self.all_tests:
            self.skipTest("no test binaries given on the command line")
        declared = [t for binary, sources in OPTIONAL_SUITES.items() if binary not in self.tests
                    for t in declared_tests(sources)]
        missing = []
        for doc in USER_DOCS:
            for m in TEST_RE.finditer(read(doc)):
                name = m.group(1)
                core = re.sub(r"^\w+/", "", name).split("/")[0]  # Instance/Suite.Name/param → Suite.Name
                # A parameterised test's full name is Instance/Suite.Name/param: the doc's name must
                # be whole between the slashes (CudaGemm.Forward must not pass for ...ForwardMatchesCpu).
                if not (any(gtest_match(name, t) or gtest_match("*/" + name, t) or gtest_match("*/" + name + "/*", t)
                            or gtest_match(name + "/*", t) for t in self.all_tests)
                        or any(gtest_match(core, t) for t in declared)):
                    missing.append("%s names the test %s, which no test binary has" % (doc, name))
        self.assertEqual(missing, [], "\n" + "\n".join(missing))

    def test_filters_match(self):
        if not self.all_tests:
            self.skipTest("no test binaries given on the command line")
        stale, checked = [], 0
        for script in sorted(glob.glob(os.path.join(REPO, "scripts", "*.sh"))) + [os.path.join(REPO, ".ci", "run")]:
            rel = os.path.relpath(script, REPO)
            text = read(rel)
            for m in FILTER_RE.finditer(text):
                line_no = text.count("\n", 0, m.start()) + 1
                context = text[text.rfind("\n", 0, m.start()) + 1:m.start()]
                if "gpu_check" in rel and "test_cuda" not in self.tests:
                    continue  # scripts/gpu_check.sh runs the GPU suite; this build has none
                if "gtest_filter" not in context and "sanitize " not in text.splitlines()[line_no - 2]:
                    continue  # a quoted word that is not a filter
                positive, _, negative = m.group(1).partition("-")
                for pattern in [p for p in positive.split(":") + negative.split(":") if p]:
                    checked += 1
                    if not any(gtest_match(pattern, t) for t in self.all_tests):
                        stale.append("%s:%d: the gtest pattern %s matches no test" % (rel, line_no, pattern))
        self.assertGreater(checked, 0, "found no gtest filters in scripts/: has their form changed?")
        self.assertEqual(stale, [], "\n" + "\n".join(stale))

    def test_documented_flags_exist(self):
        sources = ""
        for path, text in tracked_text_files():
            if path.startswith(("apps/", "bench/", "scripts/", ".ci/")) and not path.endswith(".md"):
                sources += text
        unknown = []
        for doc in USER_DOCS:
            for flag in sorted(set(FLAG_RE.findall(read(doc)))):
                # The app declares its flags by name: {"weight-decay", ...}.
                # The whole flag, not a prefix of a longer one (--epochs inside --epochs-teacher).
                whole = re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", sources)
                if flag not in NOT_FLAGS and not whole and '"%s"' % flag[2:] not in sources:
                    unknown.append("%s names %s, which no program in apps/, bench/ or scripts/ takes" % (doc, flag))
        self.assertEqual(unknown, [], "\n" + "\n".join(unknown))


if __name__ == "__main__":
    args = sys.argv[1:]
    BINARIES = [a for a in args if not a.startswith("-")]
    unittest.main(argv=[sys.argv[0]] + [a for a in args if a.startswith("-")])
