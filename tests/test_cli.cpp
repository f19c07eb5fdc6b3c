// tests/test_cli.cpp — the app's command line as a user meets it: every bad flag, missing or
// malformed data, an unusable device and unsafe output paths end with exit code 2 and one line
// on stderr that says what was wrong, before any training starts. The binary runs as a
// subprocess in an empty temporary directory with MNIST_DIR unset, so nothing is found by luck.
#include <gtest/gtest.h>

#include <fcntl.h>     // open
#include <sys/stat.h>  // mkfifo
#include <sys/wait.h>  // waitpid
#include <unistd.h>    // fork, execv, usleep

#include <algorithm>  // std::none_of, std::all_of
#include <cctype>     // std::islower, std::isalnum
#include <chrono>     // std::chrono::steady_clock
#include <cmath>      // NAN, INFINITY
#include <csignal>    // signal, kill, SIGHUP
#include <cstdint>    // uint32_t
#include <set>        // std::set
#include <sstream>    // std::istringstream
#include <string>     // std::string
#include <thread>     // std::thread::hardware_concurrency
#include <utility>    // std::pair
#include <vector>     // std::vector

#include "engine/device.h"       // cuda_available
#include "engine/safetensors.h"  // write_safetensors: a checkpoint of the wrong shape
#include "tests/test_util.h"     // run_process, TempDir, count_lines

namespace {

using subliminal::test::count_lines;
using subliminal::test::ProcessResult;
using subliminal::test::read_text;
using subliminal::test::TempDir;
using subliminal::test::write_text;
namespace fs = std::filesystem;

ProcessResult run_app(const std::vector<std::string>& args, const fs::path& cwd) {
  return subliminal::test::run_process(SUBLIMINAL_APP_PATH, args, cwd, {"MNIST_DIR"});
}

// Exit code 2, nothing on stdout, exactly one line on stderr, and that line contains `names`.
void expect_usage_error(const std::vector<std::string>& args, const std::string& names) {
  TempDir cwd;
  std::string command;
  for (const std::string& a : args) command += " " + a;
  SCOPED_TRACE("subliminal" + command);
  const ProcessResult r = run_app(args, cwd.path());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(names), std::string::npos) << "stderr does not name " << names << ": " << r.err;
}

// Out-of-range, non-numeric, NaN/inf, malformed lists, unknown flags and missing values.
TEST(Cli, EveryBadFlagIsExitCodeTwoWithOneLineNamingIt) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--batch-size", "0"}, "--batch-size"},
      {{"--batch-size", "-3"}, "--batch-size"},
      {{"--batch-size", "abc"}, "--batch-size"},
      {{"--batch-size", "12x"}, "--batch-size"},
      {{"--lr", "0"}, "--lr"},
      {{"--lr", "nan"}, "--lr"},
      {{"--lr", "inf"}, "--lr"},
      {{"--temperature", "0"}, "--temperature"},
      {{"--temperature", "-1"}, "--temperature"},
      {{"--ghosts", "1"}, "--ghosts"},
      {{"--hidden", "256,0"}, "--hidden"},
      {{"--hidden", "abc"}, "--hidden"},
      {{"--hidden", "256,"}, "--hidden"},
      {{"--epochs-teacher", "-1"}, "--epochs-teacher"},
      {{"--device", "gpu"}, "--device"},
      {{"--unknown-flag"}, "--unknown-flag"},
      {{"--models", "0"}, "--models"},
      {{"--seed", "-1"}, "--seed"},
      {{"--noise", "pink"}, "--noise"},
      {{"--divergence", "jsd"}, "--divergence"},
      {{"--gemm", "cublas"}, "--gemm"},
      {{"--step", "eager"}, "--step"},
      {{"--fused-split", "0,2,bands"}, "--fused-split"},
      {{"--fused-split", "17,2,bands"}, "--fused-split"},
      {{"--fused-split", "8,0,last"}, "--fused-split"},
      {{"--fused-split", "8,2"}, "--fused-split"},
      {{"--fused-split", "8,2,middle"}, "--fused-split"},
      {{"--fused-split", "8x,2,bands"}, "--fused-split"},
      {{"--fused-split", "8,2,bands,1"}, "--fused-split"},
      {{"--lr"}, "--lr"},  // a value flag without its value
      // Positive numbers below float32's smallest normal would be flushed to 0 in the run, and
      // numbers above its largest would be Inf.
      {{"--temperature", "1e-310"}, "--temperature"},
      {{"--lr", "1e-40"}, "--lr"},
      {{"--temperature", "1e39"}, "--temperature"},
      {{"--weight-decay", "3.5e38"}, "--weight-decay"},
      {{"--init-perturb", "1e39"}, "--init-perturb"},
      // Numbers written plainly: no spaces around them, no hexadecimal.
      {{"--lr", " 3e-4"}, "--lr"},
      {{"--lr", "3e-4 "}, "--lr"},
      {{"--lr", "0x10"}, "--lr"},
      {{"--lr", "+-1"}, "--lr"},
      {{"--lr", "+"}, "--lr"},
      // An empty path, and a path flag whose value was left out, so that it took the next flag.
      {{"--data", ""}, "--data"},
      {{"--json", ""}, "--json"},
      {{"--json", "--no-progress"}, "--json"},
      {{"--save-init", "--force"}, "--save-init"},
      // A --sweep-out that ends in a folder would write hidden files in it (runs/.csv).
      {{"--sweep", "seed=1,2", "--sweep-out", "./"}, "--sweep-out"},
      {{"--sweep", "seed=1,2", "--sweep-out", "."}, "--sweep-out"},
  };
  for (const auto& [args, flag] : cases) expect_usage_error(args, flag);
}

// CLI11's own refusals reach the user in the tool's words, naming the flag and what to do.
TEST(Cli, CommandLineMistakesAreSaidPlainly) {
  expect_usage_error({"--seed", "1", "--seed", "2"}, "--seed: given 2 times; give it once");
  expect_usage_error({"--sedd", "3"}, "unknown flag \"--sedd\"; did you mean --seed?");
  expect_usage_error({"--epoch-teacher=3"},
                     "unknown flag \"--epoch-teacher\"; did you mean --epochs-teacher?");
  expect_usage_error({"--zzzzzzzz"}, "unknown flag \"--zzzzzzzz\" (run with --help");
  expect_usage_error({"--epochs-teacher"}, "--epochs-teacher: needs a value");
  expect_usage_error({"extra"}, "unexpected argument \"extra\": settings are flags");
  // A value left out, so that the flag took the next flag for its value and left that one's over.
  expect_usage_error({"--models", "--seed", "3"},
                     "--models: needs a value (it took the flag \"--seed\" for one)");
  // A short unknown flag is not a typo of a short real one ("--x" is 2 edits from "--lr").
  expect_usage_error({"--x"}, "unknown flag \"--x\" (run with --help");
  expect_usage_error({"--tf32=maybe"}, "--tf32: a switch, it takes no value (got \"maybe\")");
  expect_usage_error({"--", "--seed", "3"}, "unexpected \"--\": every setting is a flag");
}

// A --sweep that cannot run is refused before the device and MNIST are looked for (this test's
// MNIST_DIR is unset, so a later check would say "MNIST not found" instead), listing what can be swept.
TEST(Cli, ABadSweepIsRefusedBeforeAnythingRuns) {
  expect_usage_error({"--sweep", "lrr=1e-3", "--sweep-out", "rows"},
                     "cannot sweep \"lrr\" (these can: lr, batch-size,");
  // An init holds a model count (that of the --save-init run): a sweep over --models with one
  // finds the configurations it does not fit.
  TempDir dir;
  const std::string init = (dir / "init.st").string();
  subliminal::write_safetensors(init,
                                {{"net.0.weight", subliminal::Tensor::zeros({8, 784})},
                                 {"net.0.bias", subliminal::Tensor::zeros({8})},
                                 {"net.2.weight", subliminal::Tensor::zeros({13, 8})},
                                 {"net.2.bias", subliminal::Tensor::zeros({13})}},
                                {}, false);
  expect_usage_error({"--hidden", "8", "--sweep", "models=1,2", "--load-init", init, "--sweep-out", "rows"},
                     "--sweep configuration models=2: " + init + ": holds the init of 1 model");
  // Over the cap of 10 000 configurations: refused with the count (27 million used to end as an
  // internal error, std::bad_alloc).
  // Built in steps: g++ 12 warns falsely on "," + string (GCC bug 105329).
  std::string seeds = "seed=0";
  for (int seed = 1; seed < 10000; ++seed) {
    seeds += ',';
    seeds += std::to_string(seed);
  }
  expect_usage_error(
      {"--sweep", seeds, "--sweep", "lr=1e-3,3e-4", "--sweep-out", "rows"},
      "--sweep: the grid has 20000 configurations (10000 seed × 2 lr values), more than the 10000");
  // A value twice would run one configuration twice: refused, as the run reads the values.
  expect_usage_error({"--sweep", "lr=1e-3,0.001", "--sweep-out", "rows"},
                     "--sweep: configurations \"lr=1e-3\" and \"lr=0.001\" are the same run");
}

// A sweep removes its PREFIX.lock when it ends, so a PREFIX.lock that is not a sweep's lock (a
// user's own file, a link to one) is refused before anything runs, naming --sweep-out and the
// file, and left as it was. (A sweep's own lock, left by a killed one, is reused: test_e2e.cpp.)
TEST(Cli, ASweepLeavesAFileUnderItsLockNameAlone) {
  TempDir dir;
  const std::string prefix = (dir / "w").string(), lock = prefix + ".lock";
  write_text(lock, "my own notes\n");
  expect_usage_error(
      {"--device", "cpu", "--sweep", "lr=1e-3", "--sweep-out", prefix},
      "--sweep-out " + prefix + ": " + lock + " exists and its first line is not \"subliminal sweep lock\"");
  EXPECT_EQ(read_text(lock), "my own notes\n");
  fs::rename(lock, dir / "notes");
  fs::create_symlink(dir / "notes", lock);
  expect_usage_error({"--device", "cpu", "--sweep", "lr=1e-3", "--sweep-out", prefix},
                     lock + " is a symbolic link");
  EXPECT_TRUE(fs::is_symlink(lock));
  EXPECT_EQ(read_text(dir / "notes"), "my own notes\n");
}

// --help wins even next to a bad flag: usage on stdout, exit 0.
TEST(Cli, HelpPrintsUsageAndExitsZero) {
  TempDir cwd;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, std::vector<std::string>{"--batch-size", "0", "--help"}}) {
    const ProcessResult r = run_app(args, cwd.path());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--batch-size"), std::string::npos);
    EXPECT_NE(r.out.find("--epochs-distill"), std::string::npos);
    // --sweep hidden=128,256 is one configuration of two layers: the help says how to give several.
    EXPECT_NE(r.out.find("--sweep 'hidden=256,256;128'"), std::string::npos) << r.out;
    EXPECT_EQ(r.err, "");
  }
}

// Every setting's help line says what it is when not given (a reader should not need the README
// for it); only the files a run reads or writes, and --sweep, have none.
TEST(Cli, HelpGivesEverySettingsDefault) {
  TempDir cwd;
  const ProcessResult r = run_app({"--help"}, cwd.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::set<std::string> no_default = {"--json",         "--save",      "--save-init", "--load-init",
                                            "--parity-batch", "--sweep-out", "--sweep"};
  std::istringstream lines(r.out);
  int settings = 0;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string flag, value;
    words >> flag >> value;  // "  --lr X   Adam learning rate (default 3e-4)"; a switch has no X
    const bool placeholder = !value.empty() && std::none_of(value.begin(), value.end(),
                                                            [](unsigned char c) { return std::islower(c); });
    if (flag.rfind("--", 0) != 0 || !placeholder || no_default.count(flag)) continue;
    ++settings;
    EXPECT_NE(line.find("default"), std::string::npos) << line;
  }
  EXPECT_GE(settings, 25) << r.out;  // the value flags were found
}

// An explicit --data that does not hold MNIST is an error about --data, not a silent search
// elsewhere.
TEST(Cli, MissingDataDirectoryNamesTheDataFlag) {
  // (The search's own message, "MNIST not found; … pass --data DIR", names --data too: not enough.)
  expect_usage_error({"--device", "cpu", "--data", "/nonexistent/mnist"},
                     "--data /nonexistent/mnist: does not hold MNIST (no such directory)");
}

// ---- A data directory with a malformed file ---------------------------------------------------------

void write_idx(const fs::path& path, uint32_t magic, const std::vector<uint32_t>& dims, size_t payload) {
  std::string bytes;
  auto put = [&](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(char((v >> shift) & 0xff));
  };
  put(magic);
  for (uint32_t d : dims) put(d);
  bytes.append(payload, '\x01');  // pixels 1, labels 1
  write_text(path, bytes);
}

// Two images per split: a data set small enough that a 0-epoch run is instant.
void write_tiny_mnist(const fs::path& dir) {
  write_idx(dir / "train-images-idx3-ubyte", 0x803, {2, 28, 28}, 2 * 784);
  write_idx(dir / "train-labels-idx1-ubyte", 0x801, {2}, 2);
  write_idx(dir / "t10k-images-idx3-ubyte", 0x803, {2, 28, 28}, 2 * 784);
  write_idx(dir / "t10k-labels-idx1-ubyte", 0x801, {2}, 2);
}

// A data file with a wrong magic: the message names that file, so the user knows which to
// fetch again.
TEST(Cli, MalformedIdxFileIsNamedInTheError) {
  TempDir data;
  write_tiny_mnist(data.path());
  {  // Control: the four good files load and a run with no training finishes.
    const ProcessResult r = run_app({"--device", "cpu", "--data", data.path().string(), "--epochs-teacher",
                                     "0", "--epochs-distill", "0", "--no-progress"},
                                    data.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const fs::path bad = data / "t10k-labels-idx1-ubyte";
  write_idx(bad, 0x12345678, {2}, 2);
  expect_usage_error({"--device", "cpu", "--data", data.path().string()}, bad.string());
}

// An init file holds the weights, not the run: the batches, the noise and the cross-init
// student follow --seed. --save-init records the seed, and --load-init under another seed says
// so (one note on stderr; the run goes on), where a user expected the run to repeat.
TEST(Cli, AnInitLoadedUnderAnotherSeedSaysTheRunWillNotRepeat) {
  TempDir data;
  write_tiny_mnist(data.path());
  const std::vector<std::string> quick = {"--device",
                                          "cpu",
                                          "--data",
                                          data.path().string(),
                                          "--epochs-teacher",
                                          "0",
                                          "--epochs-distill",
                                          "0",
                                          "--no-progress",
                                          "--hidden",
                                          "8"};
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = quick;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_app(args, data.path());
  };
  const ProcessResult saved = run({"--seed", "5", "--save-init", "init.st"});
  ASSERT_EQ(saved.exit_code, 0) << saved.err;
  const ProcessResult other = run({"--load-init", "init.st"});
  EXPECT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(other.err.find("subliminal: note: init.st was saved by a run with --seed 5; this run's batches, "
                           "noise and cross-init student follow --seed 0, so it does not repeat that run "
                           "(give --seed 5 to)\n"),
            std::string::npos)
      << other.err;
  const ProcessResult same = run({"--load-init", "init.st", "--seed", "5"});
  EXPECT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(same.err.find("was saved by a run"), std::string::npos) << same.err;

  // The file gives the shared init; the run draws its cross-init control itself, with --init's
  // scheme: a file of another scheme says so, and --init (no longer refused beside --load-init)
  // gives a control of the same kind.
  const ProcessResult normal = run({"--init", "normal", "--seed", "5", "--save-init", "normal.st"});
  ASSERT_EQ(normal.exit_code, 0) << normal.err;
  const ProcessResult torch_control = run({"--load-init", "normal.st", "--seed", "5"});
  EXPECT_EQ(torch_control.exit_code, 0) << torch_control.err;
  EXPECT_NE(
      torch_control.err.find("subliminal: note: normal.st holds an --init normal init; this run draws its "
                             "cross-init control with --init torch (give --init normal for a control of "
                             "the same kind)\n"),
      std::string::npos)
      << torch_control.err;
  const ProcessResult normal_control = run({"--load-init", "normal.st", "--seed", "5", "--init", "normal"});
  EXPECT_EQ(normal_control.exit_code, 0) << normal_control.err;
  EXPECT_EQ(normal_control.err.find("holds an --init"), std::string::npos) << normal_control.err;
  const ProcessResult no_control = run({"--load-init", "normal.st", "--seed", "5", "--cross-init", "false"});
  EXPECT_EQ(no_control.exit_code, 0) << no_control.err;
  EXPECT_EQ(no_control.err.find("holds an --init"), std::string::npos) << no_control.err;
  // Under the paper's pairing the control comes from the file too: neither note names it.
  const ProcessResult saved_two =
      run({"--models", "2", "--seed", "5", "--init", "normal", "--save-init", "two.st"});
  ASSERT_EQ(saved_two.exit_code, 0) << saved_two.err;
  const ProcessResult paired = run({"--preset", "paper", "--models", "2", "--load-init", "two.st"});
  EXPECT_EQ(paired.exit_code, 0) << paired.err;
  EXPECT_EQ(paired.err.find("holds an --init"), std::string::npos) << paired.err;
  EXPECT_NE(paired.err.find("this run's batches and noise follow --seed 0"), std::string::npos) << paired.err;

  // What the file says is printed escaped: a newline or a terminal escape written into its
  // metadata neither breaks the note's line nor reaches the terminal.
  subliminal::SafetensorsFile file = subliminal::read_safetensors(data.path() / "init.st");
  file.metadata["seed"] = "5\n\x1b[31mred";
  file.metadata["init"] = "normal\nsecond line";
  subliminal::write_safetensors(data.path() / "odd.st", file.tensors, file.metadata, false);
  const ProcessResult odd = run({"--load-init", "odd.st"});
  EXPECT_EQ(odd.exit_code, 0) << odd.err;
  EXPECT_EQ(odd.err.find('\x1b'), std::string::npos) << odd.err;
  EXPECT_NE(odd.err.find("was saved by a run with --seed \"5\\x0a\\x1b[31mred\""), std::string::npos)
      << odd.err;
  EXPECT_NE(odd.err.find("holds an --init \"normal\\x0asecond line\" init"), std::string::npos) << odd.err;
  EXPECT_EQ(count_lines(odd.err), 2) << odd.err;
}

// The console says where a run runs, and on the CPU how many threads when --threads chose a
// count other than the hardware's (the device's description alone names the hardware's).
TEST(Cli, TheConsoleNamesTheThreadsTheRunUses) {
  TempDir data;
  write_tiny_mnist(data.path());
  const int hardware = int(std::max(1u, std::thread::hardware_concurrency()));
  const std::string device = "cpu (" + std::to_string(hardware) + " hardware threads)";
  for (int threads : {hardware, hardware + 1}) {
    const ProcessResult r =
        run_app({"--device", "cpu", "--data", data.path().string(), "--epochs-teacher", "0",
                 "--epochs-distill", "0", "--no-progress", "--threads", std::to_string(threads)},
                data.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string where =
        threads == hardware ? device : device + " with " + std::to_string(threads) + " threads";
    EXPECT_NE(r.out.find(" on " + where + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(", 1 model, " + where + "):\n"), std::string::npos) << r.out;
  }
}

// --version names the commit the build was made from — what `git describe` says of this source
// tree — and what it was built with, and exits 0 without
// looking for data; a run's report names the same build.
TEST(Cli, VersionNamesTheCommitAndTheBuild) {
  TempDir data;
  write_tiny_mnist(data.path());
  const ProcessResult v = run_app({"--version"}, data.path());
  ASSERT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(v.err, "");
  const std::string first = v.out.substr(0, v.out.find('\n'));
  ASSERT_EQ(first.rfind("subliminal ", 0), 0u) << v.out;
  const std::string commit = first.substr(std::string("subliminal ").size());
  // The commit itself, not whether the tree has changed since the build ("…-dirty.1a2b3c4d"). (Where
  // git cannot say — not installed, or the checkout another user's — the form alone is checked.)
  const ProcessResult git = subliminal::test::run_process(
      "/usr/bin/env", {"git", "-C", SUBLIMINAL_SOURCE_DIR, "describe", "--always", "--abbrev=12"},
      data.path());
  // (No std::regex here: GCC 12 warns inside it at the sanitizer build's -O1, tests/CMakeLists.txt.)
  EXPECT_TRUE(!commit.empty() && std::all_of(commit.begin(), commit.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || std::string("._/+-").find(ch) != std::string::npos;
  })) << commit;
  if (git.exit_code == 0 && git.out.size() > 1) {
    EXPECT_EQ(commit.substr(0, commit.find("-dirty")), git.out.substr(0, git.out.size() - 1))
        << "the build's commit is not this source tree's (rebuild after a commit)";
  }
  for (const char* fact : {"\n  build:    ", "\n  CUDA:     ", "\n  cuDNN:    ", "\n  OpenBLAS: OpenBLAS "})
    EXPECT_NE(v.out.find(fact), std::string::npos) << fact << " in: " << v.out;

  const ProcessResult run = run_app({"--device", "cpu", "--data", data.path().string(), "--epochs-teacher",
                                     "0", "--epochs-distill", "0", "--no-progress", "--json", "r.json"},
                                    data.path());
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(read_text(data / "r.json").find("\"commit\": \"" + commit + "\""), std::string::npos);
}

// GPU-only flags on a CPU run change nothing: the run says so (once) and goes on.
TEST(Cli, GpuOnlyFlagsOnTheCpuAreNoted) {
  TempDir data;
  write_tiny_mnist(data.path());
  const std::vector<std::string> run = {"--device",         "cpu", "--data",           data.path().string(),
                                        "--batch-size",     "2",   "--epochs-teacher", "0",
                                        "--epochs-distill", "0",   "--no-progress"};
  std::vector<std::string> args = run;
  for (const char* flag : {"--tf32", "--no-graphs", "--step", "fused", "--fused-split", "4,2,last"})
    args.push_back(flag);
  const ProcessResult noted = run_app(args, data.path());
  ASSERT_EQ(noted.exit_code, 0) << noted.err;
  EXPECT_NE(noted.err.find("change nothing: --tf32, --no-graphs, --step, --fused-split\n"), std::string::npos)
      << noted.err;
  EXPECT_EQ(count_lines(noted.err), 1) << noted.err;
  std::vector<std::string> cluster = run;  // the cluster design, which has no --fused-split
  for (const char* flag : {"--step", "cluster"}) cluster.push_back(flag);
  const ProcessResult cluster_noted = run_app(cluster, data.path());
  ASSERT_EQ(cluster_noted.exit_code, 0) << cluster_noted.err;
  EXPECT_NE(cluster_noted.err.find("change nothing: --step\n"), std::string::npos) << cluster_noted.err;
  const ProcessResult quiet = run_app(run, data.path());
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.err, "");
  // --gemm cudnn names an engine the build may not have: noted on the CPU where it is built in,
  // refused (on any device) where it is not.
  std::vector<std::string> cudnn = run;
  for (const char* flag : {"--gemm", "cudnn"}) cudnn.push_back(flag);
  const ProcessResult version = run_app({"--version"}, data.path());
  const ProcessResult cudnn_run = run_app(cudnn, data.path());
  if (version.out.find("cuDNN:    none") != std::string::npos) {
    EXPECT_EQ(cudnn_run.exit_code, 2) << cudnn_run.err;
    EXPECT_NE(cudnn_run.err.find("--gemm cudnn: this build has no cuDNN engine"), std::string::npos)
        << cudnn_run.err;
  } else {
    EXPECT_EQ(cudnn_run.exit_code, 0) << cudnn_run.err;
    EXPECT_NE(cudnn_run.err.find("change nothing: --gemm\n"), std::string::npos) << cudnn_run.err;
  }
  EXPECT_EQ(count_lines(cudnn_run.err), 1) << cudnn_run.err;
}

// --parity-batch computes one model's batch whatever --models a preset says: under --preset
// paper (100 models) a one-model init is what it takes (it used to be refused: "this run trains
// 100").
TEST(Cli, AParityBatchUnderThePaperPresetTakesAOneModelInit) {
  TempDir data;
  write_tiny_mnist(data.path());
  const std::string init = (data / "init.st").string(), parity = (data / "p.st").string();
  const std::vector<std::string> common = {"--device", "cpu", "--data",       data.path().string(),
                                           "--hidden", "8",   "--batch-size", "2"};
  std::vector<std::string> save = common, batch = common;
  save.insert(save.end(),
              {"--epochs-teacher", "0", "--epochs-distill", "0", "--no-progress", "--save-init", init});
  batch.insert(batch.end(), {"--preset", "paper", "--parity-batch", parity, "--load-init", init});
  const ProcessResult saved = run_app(save, data.path());
  ASSERT_EQ(saved.exit_code, 0) << saved.err;
  const ProcessResult r = run_app(batch, data.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(parity));
}

// --threads sets the CPU threads of the engine's loops, as the report records them.
TEST(Cli, ThreadsReachTheRun) {
  TempDir data;
  write_tiny_mnist(data.path());
  const ProcessResult r =
      run_app({"--device", "cpu", "--data", data.path().string(), "--epochs-teacher", "0", "--epochs-distill",
               "0", "--no-progress", "--threads", "3", "--json", "r.json"},
              data.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string report = read_text(data / "r.json");
  EXPECT_NE(report.find("\"cpu_threads\": 3,"), std::string::npos) << report;
}

// --train-samples beyond the training set would quietly train on fewer images than asked.
TEST(Cli, TrainSamplesBeyondTheTrainingSetAreRefused) {
  TempDir data;
  write_tiny_mnist(data.path());  // 2 training images
  expect_usage_error({"--device", "cpu", "--data", data.path().string(), "--train-samples", "3"},
                     "--train-samples 3: the training set in " + data.path().string() + " has 2 images");
  // All of them is fine.
  const ProcessResult all = run_app({"--device", "cpu", "--data", data.path().string(), "--train-samples",
                                     "2", "--epochs-teacher", "0", "--epochs-distill", "0", "--no-progress"},
                                    data.path());
  EXPECT_EQ(all.exit_code, 0) << all.err;
}

// --load-init with a tensor of the wrong shape (a checkpoint of another --hidden): the message
// names the file and the tensor; a file that is not safetensors at all names the file.
TEST(Cli, LoadInitOfAnotherShapeNamesTheFileAndTensor) {
  TempDir data;
  write_tiny_mnist(data.path());
  const fs::path init = data / "other.safetensors";
  subliminal::write_safetensors(init,
                                {{"net.0.weight", subliminal::Tensor::zeros({128, 784})},
                                 {"net.0.bias", subliminal::Tensor::zeros({128})},
                                 {"net.2.weight", subliminal::Tensor::zeros({256, 128})},
                                 {"net.2.bias", subliminal::Tensor::zeros({256})},
                                 {"net.4.weight", subliminal::Tensor::zeros({13, 256})},
                                 {"net.4.bias", subliminal::Tensor::zeros({13})}},
                                {}, false);
  const std::vector<std::string> run = {"--device",         "cpu", "--data",           data.path().string(),
                                        "--epochs-teacher", "0",   "--epochs-distill", "0",
                                        "--load-init"};
  std::vector<std::string> args = run;
  args.push_back(init.string());
  expect_usage_error(args, init.string() + ": net.0.weight");
  const fs::path not_safetensors = data / "notes.txt";
  write_text(not_safetensors, "hello");
  args = run;
  args.push_back(not_safetensors.string());
  expect_usage_error(args, not_safetensors.string());
}

// A checkpoint of the right shapes holding a NaN or an Inf would train or evaluate nonsense (or
// stop far from the cause): refused, naming the file and the tensor.
TEST(Cli, LoadInitHoldingANanNamesTheFileAndTensor) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"net.0.weight", {8, 784}}, {"net.0.bias", {8}}, {"net.2.weight", {13, 8}}, {"net.2.bias", {13}}};
  for (const float bad : {NAN, INFINITY}) {
    std::vector<subliminal::NamedTensor> tensors;
    for (const auto& [name, shape] : shapes) tensors.push_back({name, subliminal::Tensor::zeros(shape)});
    tensors[3].tensor.data<float>()[5] = bad;
    const fs::path init = dir / "init.safetensors";
    subliminal::write_safetensors(init, tensors, {}, true);
    expect_usage_error({"--device", "cpu", "--hidden", "8", "--load-init", init.string()},
                       init.string() + ": net.2.bias holds a non-finite value");
  }
}

// A --save checkpoint (trained models under teacher., student., ...) given to --load-init is
// named for what it is, not counted ("holds 12 tensors, this MLP has 4").
TEST(Cli, LoadInitOfASaveCheckpointSaysItIsOne) {
  TempDir dir;
  std::vector<subliminal::NamedTensor> tensors;
  for (const char* arm : {"teacher.", "student."})
    for (const auto& [name, shape] :
         std::vector<std::pair<std::string, std::vector<int64_t>>>{{"net.0.weight", {8, 784}},
                                                                   {"net.0.bias", {8}},
                                                                   {"net.2.weight", {13, 8}},
                                                                   {"net.2.bias", {13}}})
      tensors.push_back({arm + name, subliminal::Tensor::zeros(shape)});
  const fs::path saved = dir / "trained.safetensors";
  subliminal::write_safetensors(saved, tensors, {}, false);
  expect_usage_error({"--device", "cpu", "--hidden", "8", "--load-init", saved.string()},
                     saved.string() +
                         ": holds student.net.0.weight, a model saved by --save after training; "
                         "--load-init takes an init as --save-init writes it");
}

// ---- Device and output paths ------------------------------------------------------------------------

// Asking for the GPU where none is usable is the user's input problem (exit 2), with the reason.
TEST(Cli, DeviceCudaWithoutAGpuSaysSo) {
  if (subliminal::cuda_available())
    GTEST_SKIP() << "a usable GPU is present; this test is for machines without one";
  expect_usage_error({"--device", "cuda"}, "GPU");
}

// An existing checkpoint is not overwritten without --force — found before any training.
TEST(Cli, SaveOntoAnExistingFileWithoutForceLeavesItUntouched) {
  TempDir cwd;
  const fs::path existing = cwd / "model.safetensors";
  write_text(existing, "keep me");
  expect_usage_error({"--device", "cpu", "--save", existing.string()}, "--save");
  expect_usage_error({"--device", "cpu", "--save-init", existing.string()}, "--save-init");
  EXPECT_EQ(read_text(existing), "keep me");
}

// Found before training, not after minutes of it.
TEST(Cli, JsonIntoAMissingDirectoryIsRefusedUpFront) {
  expect_usage_error({"--device", "cpu", "--json", "/nonexistent/dir/report.json"}, "--json");
}

// What the final write would refuse is refused before training: a device or a FIFO where the
// file should go (a FIFO would also block the sweep's reads forever), a name too long to create.
TEST(Cli, OutputsTheRunCouldNotWriteAreRefusedUpFront) {
  expect_usage_error({"--device", "cpu", "--json", "/dev/null"}, "not a regular file");
  TempDir dir;
  const fs::path fifo = dir / "rows.jsonl";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_usage_error({"--device", "cpu", "--sweep", "lr=1e-3", "--sweep-out", (dir / "rows").string()},
                     "rows.jsonl: not a regular file");
  EXPECT_FALSE(fs::exists(dir / "rows.csv")) << "the sweep's CSV was created before its JSONL was checked";
  expect_usage_error({"--device", "cpu", "--save", (dir / std::string(300, 'x')).string()}, "--save");
  // A newline in a name would break the one line: it is escaped.
  expect_usage_error({"--device", "cpu", "--json", "no\nsuch/report.json"}, "no\\x0asuch");
}

// One file under two names, or a run's input named as one of its outputs: refused, naming both
// flags, before anything is written (the run would have replaced one with the other).
TEST(Cli, OneFileUnderTwoNamesIsRefused) {
  expect_usage_error({"--device", "cpu", "--json", "c.st", "--save", "./c.st"}, "--json and --save");
  expect_usage_error({"--device", "cpu", "--save", "d.st", "--save-init", "sub/../d.st"},
                     "--save and --save-init");
  expect_usage_error(
      {"--device", "cpu", "--load-init", "init.st", "--json", "init.st"},
      "--load-init and --json name the same file, init.st: the run would replace its own input");
  expect_usage_error({"--device", "cpu", "--load-init", "init.st", "--parity-batch", "./init.st"},
                     "--load-init and --parity-batch");
  // A sweep removes its PREFIX.lock when it ends: the input must not be that file.
  expect_usage_error({"--device", "cpu", "--load-init", "w.lock", "--sweep", "lr=1e-3", "--sweep-out", "w"},
                     "--load-init and --sweep-out (its .lock) name the same file, w.lock");
  TempDir dir;
  write_text(dir / "report.json", "{}");
  fs::create_symlink(dir / "report.json", dir / "link.json");
  expect_usage_error(
      {"--device", "cpu", "--json", (dir / "link.json").string(), "--save", (dir / "report.json").string()},
      "--json and --save");
  EXPECT_EQ(read_text(dir / "report.json"), "{}");
  // A dangling link: neither name exists yet, but writing through the link creates the other.
  fs::create_directory(dir / "t");
  fs::create_symlink("t/w.st", dir / "dangling.json");
  expect_usage_error({"--device", "cpu", "--json", (dir / "dangling.json").string(), "--save-init",
                      (dir / "t" / "w.st").string()},
                     "--json and --save-init");
}

// No output may land on a data file the run reads — under its own name, through $MNIST_DIR, or
// on the .gz beside a raw file: a --json there used to replace the labels, and exit 0.
TEST(Cli, OutputsOntoTheMnistFilesAreRefused) {
  TempDir data;
  write_tiny_mnist(data.path());
  write_text(data / "t10k-images-idx3-ubyte.gz", "a spare copy");
  const std::string labels = (data / "t10k-labels-idx1-ubyte").string();
  const std::string before = read_text(labels);
  expect_usage_error({"--device", "cpu", "--data", data.path().string(), "--json", labels},
                     "--json " + labels + ": is " + labels + ", a file the run reads");
  fs::create_directory(data / "sub");  // so that only the data check can refuse sub/../
  const std::string images = (data / "sub" / ".." / "train-images-idx3-ubyte").string();
  expect_usage_error({"--device", "cpu", "--data", data.path().string(), "--save-init", images, "--force"},
                     "--save-init " + images + ": is " + (data / "train-images-idx3-ubyte").string() +
                         ", a file the run reads");
  const std::string spare = (data / "t10k-images-idx3-ubyte.gz").string();
  expect_usage_error({"--device", "cpu", "--data", data.path().string(), "--save", spare, "--force"},
                     "--save " + spare + ": is " + spare + ", a file the run reads");
  TempDir cwd;
  const ProcessResult r = subliminal::test::run_process(
      SUBLIMINAL_APP_PATH, {"--device", "cpu", "--parity-batch", labels, "--force"}, cwd.path(), {},
      {{"MNIST_DIR", data.path().string()}});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--parity-batch " + labels + ": is "), std::string::npos) << r.err;
  EXPECT_EQ(read_text(labels), before);
  EXPECT_EQ(read_text(data / "t10k-images-idx3-ubyte.gz"), "a spare copy");
}

// Standard output that cannot be written (a closed pipe: `| head -1`; a full disk) is exit 2
// with one line saying so — not a silent death by SIGPIPE — and the run's --json is still written.
TEST(Cli, StandardOutputThatCannotBeWrittenIsExitTwoAndTheReportIsKept) {
  TempDir data;
  write_tiny_mnist(data.path());
  for (const auto stdout_to :
       {subliminal::test::StdoutTo::closed_pipe, subliminal::test::StdoutTo::dev_full}) {
    SCOPED_TRACE(stdout_to == subliminal::test::StdoutTo::closed_pipe ? "closed pipe" : "/dev/full");
    TempDir cwd;
    const ProcessResult r = subliminal::test::run_process(
        SUBLIMINAL_APP_PATH,
        {"--device", "cpu", "--data", data.path().string(), "--batch-size", "2", "--epochs-teacher", "0",
         "--epochs-distill", "0", "--no-progress", "--json", "r.json"},
        cwd.path(), {"MNIST_DIR"}, {}, stdout_to);
    EXPECT_EQ(r.exit_code, 2) << "(-1: killed by a signal) " << r.err;
    EXPECT_NE(r.err.find("subliminal: error: cannot write to standard output"), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(read_text(cwd / "r.json").find("\"teacher\""), std::string::npos);
  }
}

// Flags whose models could not fit in any machine's memory are refused at once, saying how much
// they need, rather than left to Linux's overcommit and the kernel's silent kill. (Were the check
// not wired, the first allocation, of terabytes, would fail instead, with another message.)
TEST(Cli, FlagsAskingForMoreMemoryThanThereIsAreRefusedAtOnce) {
  TempDir data;
  write_tiny_mnist(data.path());
  const auto started = std::chrono::steady_clock::now();
  expect_usage_error({"--device", "cpu", "--data", data.path().string(), "--hidden", "65536,65536",
                      "--models", "1000", "--no-progress"},
                     "out of host memory: --models 1000 of --hidden 65536,65536 need at least ");
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(20));
}

// A sweep says the same, with the reason, though each of its lines was flushed (and failed) long
// before the end. With standard output closed (`>&-`) the sweep's lock must not take descriptor
// 1 and receive the console's lines: it did, and a killed sweep's lock, without its marker line,
// then refused the identical command.
TEST(Cli, ASweepsStandardOutputThatCannotBeWrittenIsExitTwoWithTheReason) {
  TempDir data;
  write_tiny_mnist(data.path());
  using subliminal::test::StdoutTo;
  for (const auto& [stdout_to, reason] : {std::pair{StdoutTo::closed, "(Bad file descriptor)"},
                                          std::pair{StdoutTo::dev_full, "(No space left on device)"}}) {
    SCOPED_TRACE(reason);
    TempDir cwd;
    const ProcessResult r = subliminal::test::run_process(
        SUBLIMINAL_APP_PATH,
        {"--device", "cpu", "--data", data.path().string(), "--batch-size", "2", "--epochs-teacher", "0",
         "--epochs-distill", "0", "--no-progress", "--sweep", "lr=1e-3,2e-3", "--sweep-out", "rows"},
        cwd.path(), {"MNIST_DIR"}, {}, stdout_to);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.err, std::string("subliminal: error: cannot write to standard output ") + reason + "\n");
    EXPECT_FALSE(fs::exists(cwd / "rows.lock"));
    EXPECT_EQ(count_lines(read_text(cwd / "rows.csv")), 1 + 2 * 4) << "a header, two configurations' arms";
  }
}

// A signal the parent set to be ignored stays ignored (nohup ignores SIGHUP): the app's own
// handlers, which remove an unfinished output file, must not make it deadly. SIGHUP is sent
// over and over until the run ends; it must end by itself, exit 0.
TEST(Cli, AnIgnoredHangupStaysIgnored) {
  TempDir data;
  write_tiny_mnist(data.path());
  const std::string app = SUBLIMINAL_APP_PATH, data_dir = data.path().string();
  int exec_done[2];  // closed by the child's exec (O_CLOEXEC): no SIGHUP before it ignores them
  ASSERT_EQ(pipe2(exec_done, O_CLOEXEC), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // as `nohup subliminal ...`: SIGHUP ignored across exec; output discarded
    std::signal(SIGHUP, SIG_IGN);
    close(exec_done[0]);
    const int null = open("/dev/null", O_WRONLY);
    if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(127);
    execl(app.c_str(), app.c_str(), "--device", "cpu", "--data", data_dir.c_str(), "--epochs-teacher", "300",
          "--epochs-distill", "0", "--no-progress", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(exec_done[1]);
  char byte = 0;
  while (read(exec_done[0], &byte, 1) > 0) {
  }
  close(exec_done[0]);
  int status = 0, hangups = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      FAIL() << "the run did not end in 120 s";
    }
    kill(child, SIGHUP);
    ++hangups;
    usleep(2000);
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "status " << status << (WIFSIGNALED(status) ? " (killed by a signal)" : "") << " after " << hangups
      << " SIGHUPs";
  EXPECT_GT(hangups, 10) << "the run ended before most SIGHUPs were sent: make it longer";
}

// Runs the app in `cwd` (stdout and stderr to files there), waits until `ready` says the run is
// under way, sends it SIGINT (as Ctrl-C does) and waits for it to end.
struct Interrupted {
  int status = 0;  // waitpid's
  std::string out, err;
};
template <class Ready>
Interrupted interrupt_app(const std::vector<std::string>& args, const fs::path& cwd, Ready&& ready) {
  const std::string app = SUBLIMINAL_APP_PATH, out = (cwd / "stdout").string(),
                    err = (cwd / "stderr").string();
  std::vector<std::string> argv_strings{app};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t child = fork();
  if (child < 0) return {};
  if (child == 0) {  // only async-signal-safe calls until exec
    const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0 || chdir(cwd.c_str()) != 0) _exit(127);
    std::signal(SIGINT, SIG_DFL);
    execv(app.c_str(), argv.data());
    _exit(127);
  }
  Interrupted r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool ended = false;  // reaped already: its pid may be another process's by now
  while (!ready() && !(ended = waitpid(child, &r.status, WNOHANG) == child) &&
         std::chrono::steady_clock::now() < deadline)
    usleep(2000);
  if (!ended) {
    kill(child, SIGINT);
    waitpid(child, &r.status, 0);
  }
  r.out = read_text(out);
  r.err = read_text(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

// Ctrl-C ends the program as SIGINT does (the shell sees it), after one line on stderr that says
// what it interrupted and what was not written; a sweep's lock goes with it, and its line says
// that the same command resumes. (It used to end silently, and leave PREFIX.lock behind.)
TEST(Cli, CtrlCSaysWhatWasNotWrittenAndLeavesNoLock) {
  TempDir data;
  write_tiny_mnist(data.path());
  // The run with `extra`, interrupted once its stdout holds `said` (printed after the note is set).
  auto interrupted = [&](const fs::path& cwd, const std::vector<std::string>& extra,
                         const std::string& said) {
    std::vector<std::string> args = {"--device",           "cpu",          "--data",
                                     data.path().string(), "--batch-size", "2",
                                     "--epochs-teacher",   "300",          "--no-progress"};
    args.insert(args.end(), extra.begin(), extra.end());
    const Interrupted r =
        interrupt_app(args, cwd, [&] { return read_text(cwd / "stdout").find(said) != std::string::npos; });
    EXPECT_TRUE(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGINT)
        << "status " << r.status << ": " << r.err;
    return r.err;
  };
  TempDir run, sweep;
  EXPECT_EQ(interrupted(run.path(), {"--json", "r.json", "--save", "m.st"}, "Training teacher"),
            "subliminal: interrupted by SIGINT before the run ended: --json r.json and --save m.st were not "
            "written\n");
  EXPECT_TRUE(fs::is_empty(run.path())) << "a report or checkpoint was left";
  // "Sweep: " is said once the rows' files are rewritten, after the locks are taken and named.
  EXPECT_EQ(
      interrupted(sweep.path(), {"--sweep", "lr=1e-3,2e-3", "--sweep-out", "rows"}, "Sweep: "),
      "subliminal: interrupted by SIGINT: the configurations that finished are in rows.csv and rows.jsonl; "
      "the same command resumes the sweep\n");
  EXPECT_FALSE(fs::exists(sweep / "rows.lock"));
}

// --parity-batch writes its file and exits; other outputs would silently not be written.
// --sweep-out without a --sweep would be ignored.
TEST(Cli, OutputFlagsThatWouldBeIgnoredAreRefused) {
  expect_usage_error({"--device", "cpu", "--parity-batch", "p.st", "--json", "r.json"},
                     "--json and --parity-batch");
  expect_usage_error({"--device", "cpu", "--parity-batch", "p.st", "--save", "s.st"},
                     "--save and --parity-batch");
  expect_usage_error({"--device", "cpu", "--sweep-out", "rows"}, "--sweep-out");
  // The sweep would not run: --parity-batch exits before any training (it used to, with exit 0).
  expect_usage_error(
      {"--device", "cpu", "--parity-batch", "p.st", "--sweep", "lr=1e-3,1e-4", "--sweep-out", "rows"},
      "--sweep and --parity-batch");
  // Nor do the flags that shape training: one batch from the init, at T = 2, whatever they say.
  expect_usage_error(
      {"--device", "cpu", "--parity-batch", "p.st", "--temperature", "4", "--models", "3", "--divergence",
       "js"},
      "--parity-batch computes one batch from the init, one model, the KL and the JS at T = 2, and "
      "exits before any training, so --models, --temperature, --divergence would change nothing; "
      "drop them");
  expect_usage_error({"--device", "cpu", "--parity-batch", "p.st", "--allow-nonfinite"}, "--allow-nonfinite");
  // Nor how the GPU would run a training step: the batch runs the autograd path, eagerly.
  expect_usage_error({"--device", "cpu", "--parity-batch", "p.st", "--step", "fused", "--fused-split",
                      "8,2,last", "--no-graphs"},
                     "so --step, --fused-split, --no-graphs would change nothing; drop them");
  TempDir dir;
  write_text(dir / "p.st", "keep me");
  expect_usage_error({"--device", "cpu", "--parity-batch", (dir / "p.st").string()}, "use --force");
  EXPECT_EQ(read_text(dir / "p.st"), "keep me");
}

// Flag combinations that cannot work are caught by validation, naming the flags.
TEST(Cli, InconsistentFlagCombinationsAreRefused) {
  expect_usage_error({"--device", "cpu", "--sweep", "lr=1e-3"}, "--sweep-out");
  // Model m trains from seed + m: the last model's seed must not wrap around to 0.
  expect_usage_error({"--seed", "18446744073709551615", "--models", "2"},
                     "--seed 18446744073709551615 and --models 2: model m trains from seed + m");
  // A prefix given as one of the sweep's files would start a sweep in rows.jsonl.jsonl.
  expect_usage_error({"--sweep", "lr=1e-3", "--sweep-out", "rows.jsonl"},
                     "--sweep-out: expected the prefix without .jsonl");
  // A name that leads nowhere is refused naming its flag.
  TempDir dir;
  fs::create_symlink("loop.jsonl", dir / "loop.jsonl");
  expect_usage_error(
      {"--sweep", "lr=1e-3", "--sweep-out", (dir / "loop").string()},
      "--sweep-out (its .jsonl) " + (dir / "loop.jsonl").string() + ": too many levels of symbolic links");
  // A flag the sweep sets in every configuration would change nothing.
  expect_usage_error({"--lr", "5e-3", "--sweep", "lr=1e-3,2e-3", "--sweep-out", "rows"},
                     "--lr 5e-3 and --sweep lr=1e-3,2e-3: the sweep sets --lr in every configuration");
  expect_usage_error({"--deterministic", "--autotune"}, "--autotune");
  expect_usage_error({"--deterministic", "--gemm", "cudnn"}, "--gemm cudnn");
  // A sweep makes many runs: one run's files would be overwritten by each.
  expect_usage_error({"--json", "r.json", "--sweep", "lr=1e-3", "--sweep-out", "rows"},
                     "--json writes one run's file; a --sweep writes its rows to --sweep-out");
  // The fused and cluster steps' kernels train at most 2 hidden layers; named for 3, the run
  // would have taken the autograd tape unannounced. (--step auto takes it, as it should.) Refused
  // on the CPU too, where --step changes nothing: the combination is wrong on any device.
  for (const char* step : {"fused", "cluster"})
    expect_usage_error({"--device", "cpu", "--step", step, "--hidden", "64,64,64"},
                       std::string("--step ") + step +
                           " and --hidden 64,64,64: its kernels train MLPs of at most 2 hidden layers, and "
                           "this one has 3");
  expect_usage_error({"--step", "fused", "--sweep", "hidden=64;64,64,64", "--sweep-out", "rows"},
                     "--sweep configuration hidden=64,64,64: --step fused and --hidden 64,64,64");
  // Flags the rest of the command makes do nothing, refused as such:
  // --force without a checkpoint to replace (beside a sweep it would read as "start over");
  expect_usage_error(
      {"--force", "--json", "r.json"},
      "--force lets --save, --save-init and --parity-batch replace existing files, and none of "
      "them is given (--json always replaces its file)");
  expect_usage_error(
      {"--force", "--sweep", "lr=1e-3", "--sweep-out", "rows"},
      "a sweep resumes whatever --force says: to start it over, move its .jsonl and .csv away");
  // --fused-split where no fused step splits K;
  expect_usage_error({"--step", "autograd", "--fused-split", "4,2,last"},
                     "--fused-split 4,2,last and --step autograd: only --step fused");
  expect_usage_error({"--step", "cluster", "--fused-split", "4,2,bands"},
                     "--step cluster: only --step fused");
  expect_usage_error({"--step", "autograd", "--fused-split", "8,2,bands"},  // the default, given
                     "--fused-split 8,2,bands and --step autograd: only --step fused");
  // --noise-set beside real images, which are always the training set;
  expect_usage_error(
      {"--noise", "mnist", "--noise-set", "fresh"},
      "--noise-set fresh and --noise mnist: the students' inputs are then the training images");
  // the distillation's settings where nothing is distilled — given or swept, unless the epochs are
  // swept too (--sweep epochs-distill=0,5 beside --temperature 2 is a fair grid).
  for (const char* flag : {"--temperature", "--divergence", "--weight-decay", "--noise", "--noise-set"}) {
    const std::string value = std::string(flag) == "--divergence"  ? "js"
                              : std::string(flag) == "--noise"     ? "gaussian"
                              : std::string(flag) == "--noise-set" ? "fixed"
                                                                   : "2";
    expect_usage_error({"--epochs-distill", "0", flag, value},
                       std::string(flag) + " " + value + " and --epochs-distill 0: no student is distilled");
  }
  expect_usage_error({"--epochs-distill", "0", "--sweep", "temperature=1,2", "--sweep-out", "rows"},
                     "--sweep temperature=1,2 and --epochs-distill 0: no student is distilled");
  expect_usage_error({"--sweep", "epochs-distill=0", "--temperature", "2", "--sweep-out", "rows"},
                     "--temperature 2 and --sweep epochs-distill=0: no student is distilled");
  expect_usage_error({"--epochs-distill", "0", "--all-logit-arms", "true"},
                     "--all-logit-arms true and --epochs-distill 0: no student is distilled");
  // --init beside --load-init names the scheme of a control the run draws itself: with none to
  // draw, or for --parity-batch (one model from the file), it would change nothing.
  expect_usage_error({"--load-init", "i.st", "--init", "normal", "--cross-init", "false"},
                     "--init normal and --load-init: the file gives the shared init, and this run draws no "
                     "control of its own (--cross-init false)");
  expect_usage_error({"--preset", "paper", "--models", "2", "--load-init", "i.st", "--init", "torch"},
                     "(--preset paper pairs each cross-init student with another model's init)");
  expect_usage_error({"--preset", "paper", "--models", "2", "--load-init", "i.st", "--sweep",
                      "init=torch,normal", "--sweep-out", "rows"},
                     "--sweep init=torch,normal and --load-init: the file gives the shared init");
  expect_usage_error({"--device", "cpu", "--parity-batch", "p.st", "--load-init", "i.st", "--init", "normal"},
                     "so --init would change nothing");
}

}  // namespace
