// tests/test_mnist.cpp — locating MNIST (search order, errors) and loading it (shape, counts,
// labels), on small files the tests write; and the real data set when $MNIST_DIR points at it.
#include <gtest/gtest.h>
#include <unistd.h>  // chdir
#include <zlib.h>    // gzopen, gzwrite, gzclose

#include <chrono>      // std::chrono::steady_clock
#include <cstdio>      // std::printf
#include <cstdlib>     // getenv, setenv, unsetenv, mkdtemp
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <optional>    // std::optional
#include <string>      // std::string
#include <vector>      // std::vector

#include "data/idx.h"         // kIdxMagicImages, kIdxMagicLabels
#include "data/mnist.h"       // locate_mnist, load_mnist
#include "engine/error.h"     // subliminal::DataError
#include "tests/idx_files.h"  // idx_bytes, write_raw, write_gz
#include "tests/temp_dir.h"   // TempDir

namespace {

namespace fs = std::filesystem;
using subliminal::DataError;
using subliminal::data::kIdxMagicImages;
using subliminal::data::kIdxMagicLabels;
using subliminal::data::load_mnist;
using subliminal::data::locate_mnist;
using subliminal::data::Mnist;
using subliminal::test::Bytes;
using subliminal::test::idx_bytes;
using subliminal::test::TempDir;

// ---- Helpers --------------------------------------------------------------------------------

// Saves $MNIST_DIR, $HOME and the working directory, and puts them back at scope exit, so the
// locate tests cannot leak into each other or into the real-data test.
class EnvironmentGuard {
 public:
  EnvironmentGuard() : mnist_dir_(get("MNIST_DIR")), home_(get("HOME")), cwd_(fs::current_path()) {}
  ~EnvironmentGuard() {
    put("MNIST_DIR", mnist_dir_);
    put("HOME", home_);
    std::error_code ignored;
    fs::current_path(cwd_, ignored);
  }

 private:
  static std::optional<std::string> get(const char* name) {
    const char* value = std::getenv(name);
    return value ? std::optional<std::string>(value) : std::nullopt;
  }
  static void put(const char* name, const std::optional<std::string>& value) {
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  std::optional<std::string> mnist_dir_, home_;
  fs::path cwd_;
};

// Gzip for a .gz name, raw otherwise.
void write_file(const fs::path& path, const Bytes& bytes) {
  if (path.extension() == ".gz")
    subliminal::test::write_gz(path, bytes);
  else
    subliminal::test::write_raw(path, bytes);
}

// count images of rows x cols whose pixels all equal their index, and labels = index % 10.
Bytes images_file(uint32_t count, uint32_t rows = 28, uint32_t cols = 28) {
  Bytes pixels;
  for (uint32_t i = 0; i < count; ++i) pixels.insert(pixels.end(), size_t(rows) * cols, uint8_t(i));
  return idx_bytes(kIdxMagicImages, {count, rows, cols}, pixels);
}
Bytes labels_file(uint32_t count) {
  Bytes labels;
  for (uint32_t i = 0; i < count; ++i) labels.push_back(uint8_t(i % 10));
  return idx_bytes(kIdxMagicLabels, {count}, labels);
}

// A small MNIST in dir: 5 train and 3 test images; suffix "" writes raw files, ".gz" gzipped.
void write_small_mnist(const fs::path& dir, const std::string& suffix = "") {
  fs::create_directories(dir);
  write_file(dir / ("train-images-idx3-ubyte" + suffix), images_file(5));
  write_file(dir / ("train-labels-idx1-ubyte" + suffix), labels_file(5));
  write_file(dir / ("t10k-images-idx3-ubyte" + suffix), images_file(3));
  write_file(dir / ("t10k-labels-idx1-ubyte" + suffix), labels_file(3));
}

// ---- load_mnist -----------------------------------------------------------------------------

TEST(LoadMnist, LoadsRawAndGzippedFiles) {
  TempDir dir;
  write_file(dir / "train-images-idx3-ubyte", images_file(5));
  write_file(dir / "train-labels-idx1-ubyte.gz", labels_file(5));
  write_file(dir / "t10k-images-idx3-ubyte.gz", images_file(3));
  write_file(dir / "t10k-labels-idx1-ubyte", labels_file(3));
  const Mnist mnist = load_mnist(dir.path());
  EXPECT_EQ(mnist.dir, dir.path());
  EXPECT_EQ(mnist.train.count, 5);
  EXPECT_EQ(mnist.test.count, 3);
  EXPECT_EQ(mnist.train.rows, 28);
  EXPECT_EQ(mnist.train.cols, 28);
  ASSERT_EQ(mnist.train.images.size(), 5u * 784);
  ASSERT_EQ(mnist.test.images.size(), 3u * 784);
  EXPECT_EQ(mnist.train.images[4 * 784 + 100], 4);  // image 4 is all 4s
  EXPECT_EQ(mnist.train.labels, (Bytes{0, 1, 2, 3, 4}));
  EXPECT_EQ(mnist.test.labels, (Bytes{0, 1, 2}));
}

TEST(LoadMnist, RawIsPreferredOverGzip) {
  TempDir dir;
  write_small_mnist(dir.path(), ".gz");
  write_file(dir / "train-images-idx3-ubyte", images_file(5, 28, 28));
  write_file(dir / "train-labels-idx1-ubyte", idx_bytes(kIdxMagicLabels, {5}, {9, 9, 9, 9, 9}));
  EXPECT_EQ(load_mnist(dir.path()).train.labels, (Bytes{9, 9, 9, 9, 9}));
}

TEST(LoadMnist, CountMismatchNamesBothFiles) {
  TempDir dir;
  write_small_mnist(dir.path());
  write_file(dir / "t10k-labels-idx1-ubyte", labels_file(2));
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "2 labels",
                    "3 images", "must match");
}

TEST(LoadMnist, LabelOutOfRangeIsRefused) {
  TempDir dir;
  write_small_mnist(dir.path());
  write_file(dir / "train-labels-idx1-ubyte", idx_bytes(kIdxMagicLabels, {5}, {1, 2, 10, 3, 4}));
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "train-labels-idx1-ubyte", "label 10 at index 2", "out of range");
  write_file(dir / "train-labels-idx1-ubyte", idx_bytes(kIdxMagicLabels, {5}, {1, 2, 9, 3, 0}));
  EXPECT_EQ(load_mnist(dir.path()).train.labels, (Bytes{1, 2, 9, 3, 0}));  // 0 and 9 are digits
}

// A folder name with a line break in it is escaped in every message, which stays one line.
TEST(LoadMnist, MessagesStayOneLineWhateverTheFolderIsCalled) {
  TempDir parent;
  const fs::path dir = parent / "two\nlines";
  write_small_mnist(dir);
  write_file(dir / "train-labels-idx1-ubyte", idx_bytes(kIdxMagicLabels, {5}, {1, 2, 10, 3, 4}));
  EXPECT_DATA_ERROR(load_mnist(dir), "two\\x0alines/train-labels-idx1-ubyte\": label 10");
  write_small_mnist(dir);
  write_file(dir / "t10k-labels-idx1-ubyte", labels_file(2));
  EXPECT_DATA_ERROR(load_mnist(dir), "two\\x0alines/t10k-labels-idx1-ubyte\": holds 2 labels but \"",
                    "two\\x0alines/t10k-images-idx3-ubyte\" holds 3");
  write_file(dir / "t10k-labels-idx1-ubyte", labels_file(3));
  write_file(dir / "train-images-idx3-ubyte", images_file(5, 28, 27));
  EXPECT_DATA_ERROR(load_mnist(dir), "two\\x0alines/train-images-idx3-ubyte\": images are 28x27");
  fs::remove(dir / "train-images-idx3-ubyte");
  EXPECT_DATA_ERROR(load_mnist(dir), "two\\x0alines/train-images-idx3-ubyte\": no such file");
}

TEST(LoadMnist, ImagesMustBe28x28) {
  TempDir dir;
  write_small_mnist(dir.path());
  write_file(dir / "train-images-idx3-ubyte", images_file(5, 28, 27));
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "train-images-idx3-ubyte", "28x27", "expected 28x28");
  write_file(dir / "train-images-idx3-ubyte", images_file(5, 32, 28));
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "train-images-idx3-ubyte", "32x28", "expected 28x28");
}

TEST(LoadMnist, MissingFileIsNamed) {
  TempDir dir;
  write_small_mnist(dir.path());
  fs::remove(dir / "t10k-images-idx3-ubyte");
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "t10k-images-idx3-ubyte", "no such file");
}

TEST(LoadMnist, FileDefectsPassThroughWithTheFileName) {
  TempDir dir;
  write_small_mnist(dir.path());
  write_file(dir / "t10k-images-idx3-ubyte", idx_bytes(kIdxMagicImages, {3, 28, 28}, Bytes(100, 0)));
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "t10k-images-idx3-ubyte", "truncated");
}

// ---- locate_mnist ---------------------------------------------------------------------------

// Four places, each holding a complete MNIST, with $MNIST_DIR, the cwd and $HOME pointed at them.
struct SearchPlaces {
  TempDir root;
  fs::path flag = root / "flag", env = root / "env", cwd = root / "cwd", home = root / "home";
  fs::path in_cwd = cwd / "data" / "mnist";
  fs::path in_home = home / ".pytorch" / "MNIST_data" / "MNIST" / "raw";
  SearchPlaces() {
    for (const fs::path& dir : {flag, env, in_cwd, in_home}) write_small_mnist(dir);
    setenv("MNIST_DIR", env.c_str(), 1);
    setenv("HOME", home.c_str(), 1);
    fs::current_path(cwd);
  }
};

TEST(LocateMnist, SearchOrderIsFlagThenEnvThenCwdThenHome) {
  EnvironmentGuard guard;
  SearchPlaces places;
  EXPECT_EQ(locate_mnist(places.flag.string()), places.flag);
  EXPECT_EQ(locate_mnist(""), places.env);
  unsetenv("MNIST_DIR");
  EXPECT_TRUE(fs::equivalent(locate_mnist(""), places.in_cwd));
  fs::remove_all(places.in_cwd);
  EXPECT_EQ(locate_mnist(""), places.in_home);
}

TEST(LocateMnist, GzippedFilesQualify) {
  EnvironmentGuard guard;
  TempDir dir;
  write_small_mnist(dir.path(), ".gz");
  EXPECT_EQ(locate_mnist(dir.path().string()), dir.path());
}

TEST(LocateMnist, AMnistDirWithoutTheFilesIsAnErrorNotAFallback) {
  EnvironmentGuard guard;
  SearchPlaces places;  // ./data/mnist holds MNIST, but $MNIST_DIR was set: no silent fallback
  fs::remove(places.env / "t10k-labels-idx1-ubyte");
  EXPECT_DATA_ERROR(locate_mnist(""), "$MNIST_DIR=" + places.env.string(),
                    "missing t10k-labels-idx1-ubyte[.gz]", "unset MNIST_DIR");
  setenv("MNIST_DIR", (places.root / "typo").c_str(), 1);
  EXPECT_DATA_ERROR(locate_mnist(""), "$MNIST_DIR=", "typo", "no such directory");
  setenv("MNIST_DIR", "a\nb", 1);  // a name that would break the line is quoted
  EXPECT_DATA_ERROR(locate_mnist(""), "$MNIST_DIR=\"a\\x0ab\"");
}

TEST(LocateMnist, DataFlagWithoutTheFilesIsAnErrorNotAFallback) {
  EnvironmentGuard guard;
  SearchPlaces places;  // $MNIST_DIR etc. hold MNIST, but --data was given: no silent fallback
  const fs::path empty = places.root / "empty";
  fs::create_directory(empty);
  EXPECT_DATA_ERROR(locate_mnist(empty.string()), "--data", empty.string(), "none of the four",
                    "scripts/fetch_mnist.sh");
  fs::remove(places.flag / "train-images-idx3-ubyte");
  EXPECT_DATA_ERROR(locate_mnist(places.flag.string()), "--data", "missing train-images-idx3-ubyte[.gz]");
  EXPECT_DATA_ERROR(locate_mnist((places.root / "nowhere").string()), "--data", "nowhere",
                    "no such directory");
}

// A file the file system will not tell us about is not "missing": saying so would send the user
// to download files that are there. A symlink loop stands in for a directory we may not search
// (EACCES), which the tests cannot make while running as root.
TEST(LocateMnist, AFileThatCannotBeLookedAtIsNotCalledMissing) {
  EnvironmentGuard guard;
  TempDir dir;
  write_small_mnist(dir.path());
  fs::remove(dir / "train-labels-idx1-ubyte");
  fs::create_symlink("train-labels-idx1-ubyte", dir / "train-labels-idx1-ubyte");  // points at itself
  EXPECT_DATA_ERROR(locate_mnist(dir.path().string()), "--data", "cannot look for its files",
                    "train-labels-idx1-ubyte: Too many levels of symbolic links");
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "train-labels-idx1-ubyte: Too many levels of symbolic links");

  const fs::path looped_dir = dir / "looped";
  fs::create_symlink("looped", looped_dir);
  EXPECT_DATA_ERROR(locate_mnist(looped_dir.string()), "--data", "cannot look at it",
                    "Too many levels of symbolic links");
  try {  // nor is the user sent to download them
    locate_mnist(looped_dir.string());
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()).find("fetch"), std::string::npos) << e.what();
  }
}

// A symbolic link to nothing at a file's name (a dataset moved away) is said as such — not
// called missing, and not read past to the .gz beside it.
TEST(LocateMnist, ADanglingLinkIsSaidAndNotReadPast) {
  EnvironmentGuard guard;
  TempDir dir;
  write_small_mnist(dir.path());
  fs::copy_file(dir / "train-labels-idx1-ubyte", dir / "train-labels-idx1-ubyte.gz");  // readable beside it
  fs::remove(dir / "train-labels-idx1-ubyte");
  fs::create_symlink("/nonexistent/labels", dir / "train-labels-idx1-ubyte");
  EXPECT_DATA_ERROR(locate_mnist(dir.path().string()), "--data", "train-labels-idx1-ubyte",
                    "a symbolic link to /nonexistent/labels, which does not exist");
  EXPECT_DATA_ERROR(load_mnist(dir.path()), "a symbolic link to /nonexistent/labels, which does not exist");
}

TEST(LocateMnist, NothingFoundListsEveryPlaceSearched) {
  EnvironmentGuard guard;
  TempDir root;
  fs::create_directories(root / "cwd");
  unsetenv("MNIST_DIR");
  setenv("HOME", (root / "home").c_str(), 1);
  fs::current_path(root / "cwd");
  EXPECT_DATA_ERROR(locate_mnist(""), "MNIST not found", "$MNIST_DIR (not set)", "./data/mnist",
                    (root / "home/.pytorch/MNIST_data/MNIST/raw").string(), "scripts/fetch_mnist.sh",
                    "set MNIST_DIR");
  unsetenv("HOME");
  EXPECT_DATA_ERROR(locate_mnist(""), "$MNIST_DIR (not set)", "./data/mnist",
                    "~/.pytorch/MNIST_data/MNIST/raw ($HOME not set)");
}

// ---- The real data set ----------------------------------------------------------------------

TEST(RealMnist, MatchesThePublishedStatistics) {
  const char* dir = std::getenv("MNIST_DIR");
  if (dir == nullptr || *dir == '\0') {
    GTEST_SKIP() << "MNIST_DIR not set: point it at a directory holding the four MNIST files "
                    "(scripts/fetch_mnist.sh DIR fetches them)";
  }
  const auto start = std::chrono::steady_clock::now();
  const Mnist mnist = load_mnist(dir);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ info     ] loaded MNIST from %s in %.3f s\n", dir, seconds);

  EXPECT_EQ(mnist.train.count, 60000);
  EXPECT_EQ(mnist.test.count, 10000);
  for (const auto* split : {&mnist.train, &mnist.test}) {
    EXPECT_EQ(split->rows, 28);
    EXPECT_EQ(split->cols, 28);
    EXPECT_EQ(split->images.size(), size_t(split->count) * 784);
    EXPECT_EQ(split->labels.size(), size_t(split->count));
    for (uint8_t label : split->labels) ASSERT_LT(label, 10);
  }
  EXPECT_EQ(mnist.train.labels[0], 5);  // the famous first digit

  // Pixel means from /work/shared/mnist/SOURCE.md, given to 6 decimals.
  auto mean_over_255 = [](const std::vector<uint8_t>& pixels) {
    uint64_t sum = 0;
    for (uint8_t pixel : pixels) sum += pixel;
    return double(sum) / double(pixels.size()) / 255.0;
  };
  EXPECT_NEAR(mean_over_255(mnist.train.images), 0.130660, 5e-7);
  EXPECT_NEAR(mean_over_255(mnist.test.images), 0.132515, 5e-7);
}

}  // namespace
