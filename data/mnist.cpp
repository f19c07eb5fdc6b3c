// data/mnist.cpp — where MNIST lives (locate_mnist) and what a valid copy looks like (load_mnist).
#include "data/mnist.h"

#include <zlib.h>  // crc32_z: mnist_fingerprint

#include <algorithm>     // std::find_if
#include <cstdio>        // std::snprintf
#include <cstdlib>       // std::getenv
#include <optional>      // std::optional
#include <string>        // std::string, std::to_string
#include <system_error>  // std::error_code
#include <utility>       // std::move

#include "data/idx.h"      // read_idx, kIdxMagicImages, kIdxMagicLabels
#include "engine/error.h"  // subliminal::DataError

namespace subliminal::data {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kImageSide = 28;  // MNIST images are 28x28 pixels
constexpr uint8_t kNumClasses = 10;  // labels are the digits 0..9

// The canonical file names; each may also be stored gzipped as name + ".gz".
constexpr const char* kTrainImages = "train-images-idx3-ubyte";
constexpr const char* kTrainLabels = "train-labels-idx1-ubyte";
constexpr const char* kTestImages = "t10k-images-idx3-ubyte";
constexpr const char* kTestLabels = "t10k-labels-idx1-ubyte";
constexpr const char* kAllFiles[] = {kTrainImages, kTrainLabels, kTestImages, kTestLabels};

constexpr const char* kHowToFetch =
    "fetch it with scripts/fetch_mnist.sh DIR, then pass --data DIR or set MNIST_DIR=DIR";

// What looking for one MNIST file in a directory found: the file to read, or nothing and, when
// the answer was not simply "absent", why the file system would not say (e.g. "Permission
// denied" on a directory we may not search, or a symlink loop). Telling the two apart matters:
// "missing" sends the user off to download files that are there.
struct FileLookup {
  std::optional<fs::path> path;
  std::string problem;  // "" when every candidate is simply absent
};

// The raw file if it exists, else name + ".gz". Existence is enough here: if the raw name is,
// say, a directory, read_idx says so, rather than us quietly reading the .gz beside it — and
// a symbolic link to nothing (a moved dataset) is said as such, not read past or called missing.
FileLookup find_file(const fs::path& dir, const std::string& name) {
  FileLookup lookup;
  for (const fs::path& candidate : {dir / name, dir / (name + ".gz")}) {
    std::error_code error;  // exists() leaves it clear when the answer is a plain "no"
    if (fs::exists(candidate, error)) return {candidate, ""};
    std::error_code link_error;
    if (!error && fs::is_symlink(fs::symlink_status(candidate, link_error)))
      return {std::nullopt, path_text(candidate.string()) + ": a symbolic link to " +
                                path_text(fs::read_symlink(candidate, link_error).string()) +
                                ", which does not exist"};
    if (error && lookup.problem.empty())
      lookup.problem = path_text(candidate.string()) + ": " + error.message();
  }
  return lookup;
}

// Why dir does not hold MNIST, e.g. "no such directory"; empty when it does.
std::string why_not_mnist(const fs::path& dir) {
  std::error_code error;
  const fs::file_status status = fs::status(dir, error);  // follows symlinks, as reading will
  if (status.type() == fs::file_type::not_found) return "no such directory";
  if (error) return "cannot look at it: " + error.message();
  if (!fs::is_directory(status)) return "not a directory";

  std::string missing;
  int missing_count = 0;
  for (const char* name : kAllFiles) {
    const FileLookup lookup = find_file(dir, name);
    if (lookup.path) continue;
    if (!lookup.problem.empty()) return "cannot look for its files: " + lookup.problem;
    missing += std::string(missing.empty() ? "" : ", ") + name + "[.gz]";
    ++missing_count;
  }
  if (missing_count == 4) return "none of the four MNIST files";
  return missing.empty() ? "" : "missing " + missing;
}

// find_file, or a DataError naming the file that is missing or could not be looked for.
fs::path require_file(const fs::path& dir, const std::string& name) {
  const FileLookup lookup = find_file(dir, name);
  if (lookup.path) return *lookup.path;
  if (!lookup.problem.empty()) throw DataError(lookup.problem);
  throw DataError(path_text((dir / name).string()) + ": no such file (nor " + name + ".gz)");
}

MnistSplit load_split(const fs::path& dir, const char* images_name, const char* labels_name) {
  const fs::path images_path = require_file(dir, images_name);
  const fs::path labels_path = require_file(dir, labels_name);

  // Labels first: they are small, so a bad labels file fails before 47 MB of pixels are read.
  IdxFile labels = read_idx(labels_path, kIdxMagicLabels);
  const auto bad_label = std::find_if(labels.values.begin(), labels.values.end(),
                                      [](uint8_t label) { return label >= kNumClasses; });
  if (bad_label != labels.values.end()) {
    throw DataError(path_text(labels_path.string()) + ": label " + std::to_string(*bad_label) + " at index " +
                    std::to_string(bad_label - labels.values.begin()) + " is out of range 0..9");
  }

  IdxFile images = read_idx(images_path, kIdxMagicImages);  // dims (count, rows, cols)
  if (images.dims[1] != kImageSide || images.dims[2] != kImageSide) {
    throw DataError(path_text(images_path.string()) + ": images are " + std::to_string(images.dims[1]) + "x" +
                    std::to_string(images.dims[2]) + " pixels, expected 28x28");
  }
  if (labels.dims[0] != images.dims[0]) {
    throw DataError(path_text(labels_path.string()) + ": holds " + std::to_string(labels.dims[0]) +
                    " labels but " + path_text(images_path.string()) + " holds " +
                    std::to_string(images.dims[0]) + " images; the counts must match");
  }

  MnistSplit split;
  split.count = images.dims[0];  // >= 1: read_idx refuses zero dimensions
  split.rows = int(images.dims[1]);
  split.cols = int(images.dims[2]);
  split.images = std::move(images.values);
  split.labels = std::move(labels.values);
  return split;
}

}  // namespace

std::filesystem::path locate_mnist(const std::string& flag_dir) {
  // An explicit --data, or a $MNIST_DIR that is set, is a promise; falling back elsewhere
  // would hide the user's mistake (a typo would quietly read another copy).
  // Where the files may well be there but could not be looked at, fetching them is not the fix.
  auto could_not_look = [](const std::string& why) { return why.rfind("cannot look", 0) == 0; };
  if (!flag_dir.empty()) {
    const std::string why = why_not_mnist(flag_dir);
    if (why.empty()) return flag_dir;
    throw DataError("--data " + path_text(flag_dir) + ": does not hold MNIST (" + why + ")" +
                    (could_not_look(why) ? "" : "; fetch it with scripts/fetch_mnist.sh DIR"));
  }

  std::string searched;  // "place (why not); place (why not); ..." for the message
  auto holds_mnist = [&searched](const std::string& label, const fs::path& dir) {
    const std::string why = why_not_mnist(dir);
    if (why.empty()) return true;
    searched += (searched.empty() ? "" : "; ") + path_text(label) + " (" + why + ")";
    return false;
  };

  if (const char* env = std::getenv("MNIST_DIR"); env && *env) {
    const std::string why = why_not_mnist(env);
    if (why.empty()) return env;
    throw DataError("$MNIST_DIR=" + path_text(env) + ": does not hold MNIST (" + why + "); " +
                    (could_not_look(why) ? "" : "fetch it with scripts/fetch_mnist.sh DIR, or ") +
                    "unset MNIST_DIR to search ./data/mnist and ~/.pytorch/MNIST_data/MNIST/raw");
  }
  searched += "$MNIST_DIR (not set)";

  std::error_code error;
  const fs::path in_cwd = fs::absolute("data/mnist", error);
  if (holds_mnist("./data/mnist = " + in_cwd.string(), in_cwd)) return in_cwd;

  if (const char* home = std::getenv("HOME"); home && *home) {
    const fs::path torchvision = fs::path(home) / ".pytorch" / "MNIST_data" / "MNIST" / "raw";
    if (holds_mnist(torchvision.string(), torchvision)) return torchvision;
  } else {
    searched += "; ~/.pytorch/MNIST_data/MNIST/raw ($HOME not set)";
  }

  throw DataError("MNIST not found; searched " + searched + "; " + kHowToFetch);
}

Mnist load_mnist(const std::filesystem::path& dir) {
  Mnist mnist;
  mnist.dir = dir;
  mnist.train = load_split(dir, kTrainImages, kTrainLabels);
  mnist.test = load_split(dir, kTestImages, kTestLabels);
  return mnist;
}

std::string mnist_fingerprint(const Mnist& mnist) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const MnistSplit* split : {&mnist.train, &mnist.test})
    for (const std::vector<uint8_t>* bytes : {&split->images, &split->labels})
      crc = crc32_z(crc, bytes->data(), bytes->size());
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(crc));
  return std::to_string(mnist.train.count) + "+" + std::to_string(mnist.test.count) + " images, crc32 " + hex;
}

std::vector<std::filesystem::path> mnist_files_in(const std::filesystem::path& dir) {
  std::vector<fs::path> files;
  for (const char* name : kAllFiles)
    for (const std::string& file : {std::string(name), std::string(name) + ".gz"}) {
      std::error_code error;
      if (fs::exists(dir / file, error)) files.push_back(dir / file);
    }
  return files;
}

}  // namespace subliminal::data
