// apps/subliminal/sweep.cpp — the grid, the rows, resuming.
#include "apps/subliminal/sweep.h"

#include <fcntl.h>     // open
#include <sys/file.h>  // flock
#include <sys/stat.h>  // fstat, lstat
#include <unistd.h>    // close, unlink, pread, pwrite, ftruncate

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "apps/subliminal/build_info.h"  // kBuildCommit
#include "apps/subliminal/checkpoint.h"
#include "apps/subliminal/experiment.h"
#include "apps/subliminal/interrupt.h"  // a Ctrl-C removes the lock
#include "apps/subliminal/progress.h"
#include "apps/subliminal/report.h"
#include "data/mnist.h"          // mnist_fingerprint: the data each row was made from
#include "engine/device.h"       // device_description: the device each row ran on
#include "engine/parallel.h"     // cpu_threads: the threads each CPU row ran on
#include "engine/safetensors.h"  // write_file_atomically

namespace subliminal::app {
namespace {

// The keys --sweep may vary; parse_sweep refuses any other, although set_config_value would set
// any value flag. They are the settings the ablations of ../shared/docs/REFERENCE.md §2 vary,
// plus init, seed and models.
const std::vector<std::string>& sweepable_keys() {
  static const std::vector<std::string> keys = {"lr",     "batch-size",  "epochs-teacher", "epochs-distill",
                                                "ghosts", "temperature", "divergence",     "weight-decay",
                                                "noise",  "noise-set",   "init-perturb",   "init",
                                                "hidden", "seed",        "models"};
  return keys;
}

bool sweepable(const std::string& key) {
  const auto& keys = sweepable_keys();
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

// What every row of one sweep shares: the settings of the base run (config_json, the init
// file's resolved path among them), less the swept keys and what does not change a row (whether
// each epoch was evaluated). A row written under other settings is not a result of this sweep,
// whatever its configuration id says.
//
// Returned as a row holds it once written and read back: json_text replaces bytes that are not
// UTF-8 (in a --load-init path, say) with U+FFFD, and a row's settings are compared with these,
// so both sides must have been through it, or the identical command could never resume.
nlohmann::json sweep_base(const Config& base) {
  nlohmann::json settings = config_json(base);
  for (const std::string& sweep : base.sweeps) {
    std::string key = sweep.substr(0, sweep.find('='));
    std::replace(key.begin(), key.end(), '-', '_');  // flag names → the report's keys
    settings.erase(key);
  }
  settings.erase("eval_every_epoch");
  // With --noise swept, the noise_set above is the base --noise's (mnist's is always the fixed
  // set), not what the swept uniform or gaussian runs use: keep the --noise-set they were given.
  if (!settings.contains("noise") && settings.contains("noise_set"))
    settings["noise_set"] = noise_set_name(base.noise_set);
  return nlohmann::json::parse(json_text(settings));
}

// Every setting in which two bases differ, "key: old vs new; …", for the message: a user
// rebuilding the sweep's command needs all of them, not one per attempt.
std::string differences(const nlohmann::json& old_base, const nlohmann::json& new_base) {
  std::string text;
  const auto add = [&text](const std::string& key, const std::string& old_value,
                           const std::string& new_value) {
    text += (text.empty() ? "" : "; ") + key + ": " + old_value + " vs " + new_value;
  };
  for (const auto& [key, value] : new_base.items())
    if (!old_base.contains(key) || old_base[key] != value)
      add(key, old_base.contains(key) ? json_text(old_base[key]) : "(none)", json_text(value));
  for (const auto& [key, value] : old_base.items())
    if (!new_base.contains(key)) add(key, json_text(value), "(none)");
  return text;
}

// Settings added to the report after sweeps had been written with it, and the value a run made
// before each had: such rows name it neither in their base nor in their settings (a sweep over
// it puts it there), and are rows of that value.
// Values are JSON as config_json writes them: a string for a choice ("kl"), a number or a bool
// for a setting that is one, so that a row's base compares equal to a new one's.
const std::vector<std::pair<std::string, nlohmann::json>>& settings_added_since() {
  static const std::vector<std::pair<std::string, nlohmann::json>> added = {
      {"divergence", "kl"}};  // --divergence
  return added;
}

// A row's base as this build would write it: the settings it predates, at their old values.
nlohmann::json with_settings_added_since(const nlohmann::json& row) {
  nlohmann::json base = row["base"];
  if (!base.is_object()) return base;
  const bool has_settings = row.contains("settings") && row["settings"].is_object();
  for (const auto& [key, old_value] : settings_added_since())
    if (!base.contains(key) && !(has_settings && row["settings"].contains(key))) base[key] = old_value;
  return base;
}

// Whether a line that is not JSON is the start of one of our rows, cut short by an interrupted
// write. A row is an object with sorted keys, so it starts with {"arm":" (or is a piece of that);
// a crash can also leave the end of the file as zero bytes the write never filled in.
bool torn_row(const std::string& line) {
  const std::string written = line.substr(0, line.find_last_not_of('\0') + 1);  // npos + 1 = 0
  const std::string head = "{\"arm\":\"";
  const size_t n = std::min(written.size(), head.size());
  return written.compare(0, n, head, 0, n) == 0;
}

// One row of PREFIX.jsonl as read back: its text and what it says.
struct SweepRow {
  std::string config, arm, line;
  nlohmann::json row;
};

// What PREFIX.jsonl holds: its rows, in order. A torn row (an interrupted write) is not a row;
// its configuration counts as unfinished and runs again. Anything else that is not a row of
// this sweep stops the run: resuming on top of it would mix results.
struct SweepFile {
  std::vector<SweepRow> rows;
};
// What a sweep's rows were made from besides their settings: the data (mnist_fingerprint), and
// the contents of the --load-init file (init_file_fingerprint; "" without one).
struct MadeFrom {
  std::string data, init_file;
};

SweepFile read_sweep_rows(const std::string& jsonl_path, const nlohmann::json& base,
                          const MadeFrom& made_from) {
  const std::string& data = made_from.data;
  SweepFile file;
  std::string text;
  std::error_code missing;
  if (std::filesystem::exists(jsonl_path, missing)) {
    // Read whole or not at all: a short read would look like a torn last row, which the mended
    // file would then leave out.
    std::ifstream in(jsonl_path, std::ios::binary);
    if (!in)
      throw InputError("--sweep-out " + path_text(jsonl_path) + ": cannot read it (" + std::strerror(errno) +
                       ")");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) throw InputError("--sweep-out " + path_text(jsonl_path) + ": read error");
  }
  std::istringstream lines(text);
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.empty()) continue;
    const std::string where = "--sweep-out " + path_text(jsonl_path) + ", line " + std::to_string(number);
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      if (torn_row(line)) continue;
      throw DataError(where + ": not a JSON row of a sweep");
    }
    if (!row.is_object() || !row.contains("config") || !row["config"].is_string() || !row.contains("arm") ||
        !row["arm"].is_string() || !row.contains("test_acc") || !row["test_acc"].is_number())
      throw DataError(where + ": not a row of a sweep (needs config, arm and a numeric test_acc)");
    for (const char* key : {"ci95", "ci95_t", "std", "seconds", "n"})
      if (row.contains(key) &&
          !(key == std::string("n") ? row[key].is_number_integer() : row[key].is_number()))
        throw DataError(where + ": its " + key + " is not a number");
    if (!row.contains("base"))
      throw UsageError(where +
                       ": a row without the settings of its sweep (\"base\"; written by an older "
                       "subliminal), so it cannot be checked against this one; choose another --sweep-out");
    const nlohmann::json row_base = with_settings_added_since(row);
    if (row_base != base)
      throw UsageError(where + ": written by a sweep with other settings (" + differences(row_base, base) +
                       "); rerun with that sweep's flags to resume it, or choose another --sweep-out");
    // Rows made from other data are other results, whatever the settings (rows written before
    // they named their data are taken as they are).
    if (row.contains("data") && row["data"] != data)
      throw UsageError(where + ": made from other data (" + json_text(row["data"]) + "; this run's is \"" +
                       data + "\"); rerun with that data to resume it, or choose another --sweep-out");
    // Likewise rows from an init file replaced since (the path alone is in the base).
    if (row.contains("init_file") && row["init_file"] != made_from.init_file)
      throw UsageError(where + ": made from another --load-init file (" + json_text(row["init_file"]) +
                       "; this one's is \"" + made_from.init_file +
                       "\"); rerun with that file to resume it, or choose another --sweep-out");
    file.rows.push_back({row["config"].get<std::string>(), row["arm"].get<std::string>(), line, row});
  }
  return file;
}

// What makes two configurations one: the settings their runs read (the report's `config`), as
// text. Neither the order of the --sweep flags nor the spelling of a value (lr=0.001, lr=1e-3)
// changes it.
std::string settings_key(const Config& config) { return json_text(config_json(config)); }

// The settings key of a row's configuration: this sweep's base (the row's own base, which
// read_sweep_rows checked, is this one) with the row's swept values set.
std::string row_settings_key(const Config& base, const SweepRow& r, const std::string& jsonl_path) {
  Config config = base;
  try {
    if (!r.row.contains("settings") || !r.row["settings"].is_object())
      throw DataError("a row without its settings");
    for (const auto& [key, value] : r.row["settings"].items()) {
      // A flag a sweep cannot vary (--threads, --device, ...) is not a setting of a row: its
      // column would have no value in the report's config.
      if (!sweepable(key)) throw DataError(quoted(key) + " is not a key --sweep takes");
      set_config_value(config, key, value.get<std::string>());
    }
  } catch (const std::exception& e) {  // DataError, a UsageError of a value, nlohmann's type_error
    throw DataError("--sweep-out " + path_text(jsonl_path) + ": the row of configuration " +
                    quoted(r.config) + " has settings this sweep cannot read (" + e.what() +
                    "); choose another --sweep-out");
  }
  return settings_key(config);
}

// The arms whose rows one configuration writes: reference, teacher and each student arm.
std::set<std::string> arms_expected(const Config& config) {
  std::set<std::string> arms = {"reference", "teacher"};
  for (const ArmSpec& arm : student_arms(config)) arms.insert(arm.key);
  return arms;
}

// The first line of every PREFIX.lock a sweep writes. The lock is removed when the sweep ends,
// so a PREFIX.lock without this line — someone's own file that happens to have the name — must
// be neither written into nor removed: the sweep is refused instead.
const std::string kLockMark = "subliminal sweep lock\n";

// "--sweep-out PREFIX: PREFIX.lock is …; move it away, or choose another --sweep-out".
UsageError not_a_lock(const std::string& prefix, const std::string& path, const std::string& why) {
  return UsageError("--sweep-out " + path_text(prefix) + ": " + path_text(path) + " " + why +
                    ", so it is not a sweep's lock (a sweep removes its lock when it ends); move it away, or "
                    "choose another --sweep-out");
}

// Opens PREFIX.lock without following a symbolic link (the link is someone's, and so is what it
// points to) and without blocking on a FIFO. Returns -1 with errno set for other failures.
int open_lock_file(const std::string& prefix, const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ELOOP) throw not_a_lock(prefix, path, "is a symbolic link");
  return fd;
}

// Whether the PREFIX.lock open at `fd` may be taken over and, at the end, removed: a regular
// file with no other names, either empty (a sweep killed before it wrote the mark) or starting
// with kLockMark (left by a killed sweep). Throws UsageError otherwise.
void check_lock_is_ours(const std::string& prefix, const std::string& path, int fd) {
  struct stat st = {};
  if (::fstat(fd, &st) != 0)
    throw InputError("--sweep-out " + path_text(prefix) + ": cannot examine " + path_text(path) + " (" +
                     std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode)) throw not_a_lock(prefix, path, "is not a regular file");
  if (st.st_nlink > 1) throw not_a_lock(prefix, path, "has other names (hard links)");
  std::string head(kLockMark.size(), '\0');
  const ssize_t got = ::pread(fd, head.data(), head.size(), 0);
  if (got < 0)
    throw InputError("--sweep-out " + path_text(prefix) + ": cannot read " + path_text(path) + " (" +
                     std::strerror(errno) + ")");
  if (got != 0 && head != kLockMark)
    throw not_a_lock(prefix, path, "exists and its first line is not " + quoted("subliminal sweep lock"));
}

// PREFIX.lock, locked (flock, exclusive) while a sweep runs. A second sweep on the same prefix
// would replace the files under the first one's open handles, and the first one's later rows
// would go to files no longer there: it is refused instead. The file is removed on the way out;
// one left by a killed sweep holds no lock and is reused. A PREFIX.lock that is not a sweep's
// (check_lock_is_ours) is refused before it is written to.
class SweepLock {
 public:
  // `path`: PREFIX.lock, or another prefix's lock (sweep_lock_paths); messages name `prefix`.
  SweepLock(const std::string& prefix, const std::string& path) : path_(path) {
    const std::string name = "--sweep-out " + path_text(prefix);
    while (true) {
      fd_ = open_lock_file(prefix, path_, O_RDWR | O_CREAT);
      if (fd_ < 0)
        throw InputError(name + ": cannot create " + path_text(path_) + " (" + std::strerror(errno) + ")");
      if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd_);
        throw UsageError(name + ": in use by another sweep (it holds " + path_text(path_) +
                         "); wait for it to finish, or choose another --sweep-out");
      }
      // Locked — but if the sweep before us removed the file between our open and our lock, the
      // lock is on a file no one else will find: take the one that is there now.
      if (still_there()) break;
      ::close(fd_);
    }
    try {
      check_lock_is_ours(prefix, path_, fd_);
      // Marked as a sweep's lock only now that it is ours: a later sweep, finding it left behind
      // by a killed one, knows it may reuse and remove it.
      if (::ftruncate(fd_, 0) != 0 ||
          ::pwrite(fd_, kLockMark.data(), kLockMark.size(), 0) != ssize_t(kLockMark.size()))
        throw InputError(name + ": cannot write " + path_text(path_) + " (" + std::strerror(errno) + ")");
    } catch (...) {
      ::close(fd_);  // not ours to remove
      throw;
    }
    remember_lock_file(fd_, path_);  // a Ctrl-C removes it too (interrupt.h)
  }
  ~SweepLock() {
    forget_lock_file(fd_);
    // Before unlocking, so that a waiting sweep's check above sees it gone; and only if the name
    // is still our file (not one moved onto it while the sweep ran).
    if (still_there()) ::unlink(path_.c_str());
    ::close(fd_);
  }
  SweepLock(const SweepLock&) = delete;
  SweepLock& operator=(const SweepLock&) = delete;

 private:
  // Whether path_ names the file we hold open.
  bool still_there() const {
    struct stat held = {};
    struct stat there = {};
    return ::fstat(fd_, &held) == 0 && ::lstat(path_.c_str(), &there) == 0 && held.st_dev == there.st_dev &&
           held.st_ino == there.st_ino;
  }

  std::string path_;
  int fd_ = -1;
};

// The locks a sweep on PREFIX takes: PREFIX.lock, and for a .jsonl or .csv that is a symbolic
// link, the lock beside the file the link reaches (x.jsonl's, or x.csv's, is x.lock). The rows go
// where the link ends, so two prefixes whose files are links to one file share a lock there, and
// the second sweep is refused while the first runs (each used to hold only its own PREFIX.lock,
// and both appended to the one file). Hard links need no lock: a sweep rewrites both files
// atomically before it appends (run_sweep), which gives its names files of their own.
std::vector<std::string> sweep_lock_paths(const std::string& prefix) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths = {prefix + ".lock"};
  // One file reached by two of these names must be locked once: a second flock of it through
  // another descriptor would be refused, as if another sweep held it.
  auto same_file = [](const fs::path& a, const fs::path& b) {
    return resolved_path(a.parent_path().empty() ? "." : a.parent_path()) / a.filename() ==
           resolved_path(b.parent_path().empty() ? "." : b.parent_path()) / b.filename();
  };
  for (const char* extension : {".jsonl", ".csv"}) {
    const fs::path name = prefix + extension;
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(name, ec))) continue;
    fs::path lock = resolved_path(name);
    if (lock.extension() == ".jsonl" || lock.extension() == ".csv") lock.replace_extension();
    lock += ".lock";
    if (std::none_of(paths.begin(), paths.end(), [&](const std::string& p) { return same_file(p, lock); }))
      paths.push_back(lock.string());
  }
  return paths;
}

// One --sweep flag: its text, the key it varies and that key's values, as given.
struct SweptKey {
  std::string text, key;
  std::vector<std::string> values;
};

// "lr=1e-3,3e-4" → {lr, [1e-3, 3e-4]}. Throws UsageError for malformed text or a key that
// cannot be swept; the values are checked later (check_values).
SweptKey parse_sweep(const std::string& sweep) {
  const size_t eq = sweep.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == sweep.size())
    throw UsageError("--sweep " + quoted(sweep) + ": expected key=v1,v2,...");
  const std::string key = sweep.substr(0, eq);
  if (!sweepable(key)) {
    std::string keys;
    for (const std::string& k : sweepable_keys()) keys += (keys.empty() ? "" : ", ") + k;
    throw UsageError("--sweep " + quoted(sweep) + ": cannot sweep " + quoted(key) + " (these can: " + keys +
                     ")");
  }
  // hidden sizes contain commas themselves: separate its values with ';' instead.
  return {sweep, key, split_text(sweep.substr(eq + 1), key == "hidden" ? ';' : ',')};
}

// The most configurations one sweep may have. Each runs a whole experiment — at the notebook's
// size about a second on a GPU and 8 s on 2 CPU cores (README.md), more with --models — so
// 10 000 is hours to days of compute already, more than any ablation here needs; and every
// configuration is held in memory (its settings, its Config, its id) before the first runs, so
// a grid of millions (three keys of 300 values: 27 million) would exhaust the memory and end as
// an internal error instead of a message.
constexpr uint64_t kMaxSweepConfigs = 10000;

// Refuses a grid of more than kMaxSweepConfigs configurations, counting it from the number of
// values of each key, so that nothing is made per configuration first.
void check_grid_size(const std::vector<SweptKey>& keys) {
  uint64_t count = 1;
  bool overflow = false;  // more than 2^64: so many keys and values fit on a command line
  std::string product;
  for (const SweptKey& k : keys) {
    overflow = overflow || __builtin_mul_overflow(count, uint64_t(k.values.size()), &count);
    product += (product.empty() ? "" : " × ") + std::to_string(k.values.size()) + " " + k.key;
  }
  if (overflow || count > kMaxSweepConfigs)
    throw UsageError("--sweep: the grid has " +
                     (overflow ? std::string("more than 2^64") : std::to_string(count)) +
                     " configurations (" + product + " values), more than the " +
                     std::to_string(kMaxSweepConfigs) + " one sweep may run; split it into smaller sweeps");
}

// Every value of a key is one the key accepts. Throws UsageError naming the --sweep.
void check_values(const Config& base, const SweptKey& k) {
  for (const std::string& v : k.values) {
    Config probe = base;
    try {
      set_config_value(probe, k.key, v);  // rejects a bad value now, not halfway through the grid
    } catch (const UsageError& e) {
      throw UsageError("--sweep " + quoted(k.text) + ": " + e.what());
    }
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

constexpr const char* kCsvHeader = "config,arm,test_acc,ci95,std,n,seconds,ci95_t";

// After the statistics, the CSV has a column for each swept key, holding the value as the run
// read it — lr=1e-4 and lr=0.0001 are both 0.0001, temperature=1 and 1.0 both 1.0 — so that a
// table of a grid groups and plots without parsing the configurations' ids, whose text is the
// user's. Its keys: this sweep's, then those only older rows of the file have (an earlier grid
// of the same sweep); a row without one ran at the base's value, which is what it holds there.
struct CsvColumns {
  const Config* base = nullptr;
  std::vector<std::string> keys;
};

// The values of swept keys `keys` (flags' names: "batch-size") the row's run read: the base with
// all of the row's settings (one setting can change how another reads: noise=mnist makes any
// noise-set "fixed").
std::vector<std::string> values_read(const Config& base, const nlohmann::json& row,
                                     const std::vector<std::string>& keys) {
  Config config = base;
  if (row.contains("settings"))
    for (const auto& [key, value] : row["settings"].items())
      set_config_value(config, key, value.get<std::string>());
  const nlohmann::json read = config_json(config);
  std::vector<std::string> values;
  for (std::string field : keys) {
    std::replace(field.begin(), field.end(), '-', '_');  // config_json's name of it
    values.push_back(setting_text(read.at(field)));
  }
  return values;
}

std::string csv_header(const CsvColumns& columns) {
  std::string header = kCsvHeader;
  for (const std::string& key : columns.keys) {
    header += ',';  // (not "," + csv_field(key): GCC 12 sees a false overlap in that, -Wrestrict)
    header += csv_field(key);
  }
  return header + "\n";
}

// The CSV line of one JSONL row: the CSV is a table of the JSONL, rebuilt from it when a sweep
// starts. (Rows written before ci95_t existed get it from their std and n.)
std::string csv_line(const nlohmann::json& row, const CsvColumns& columns) {
  const int64_t n = row.value("n", int64_t(1));
  const double std = row.value("std", 0.0);
  const double ci95_t = row.contains("ci95_t") ? row["ci95_t"].get<double>()
                        : n > 1                ? student_t_975(n - 1) * std / std::sqrt(double(n))
                                               : 0.0;
  std::ostringstream line;
  line << csv_field(row["config"].get<std::string>()) << ',' << csv_field(row["arm"].get<std::string>())
       << ',' << row["test_acc"].get<double>() << ',' << row.value("ci95", 0.0) << ',' << std << ',' << n
       << ',' << row.value("seconds", 0.0) << ',' << ci95_t;
  for (const std::string& value : values_read(*columns.base, row, columns.keys))
    line << ',' << csv_field(value);
  line << '\n';
  return line.str();
}

// " student 0.691±0.053": an arm's result on a sweep's console line.
std::string result_text(const std::string& arm, double mean, double ci95) {
  char text[64];
  std::snprintf(text, sizeof text, " %.3f±%.3f", mean, ci95);
  return " " + arm + text;
}

// One configuration's experiment. What stops it names the configuration: a sweep runs many, and
// "non-finite loss in teacher training, epoch 1, step 2 of 2" or "out of host memory allocating
// … bytes" alone would not say which one to change. Rethrown as the kind of error main() tells
// apart, so the exit code stays what it was (3 for NaN/Inf, 2 for bad input or memory).
Results run_configuration(const std::string& id, const Config& config, const data::Mnist& mnist,
                          Device device, Observer& observer) {
  try {
    return run_experiment(config, mnist, device, observer);
  } catch (const NonFiniteError& e) {
    throw NonFiniteError(id + ": " + e.what());
  } catch (const OutOfMemoryError& e) {
    throw OutOfMemoryError(id + ": " + e.what());
  } catch (const InputError& e) {
    throw InputError(id + ": " + e.what());
  }
}

// What a sweep shows while a configuration runs. Per-epoch lines would drown the sweep's own, so
// they are left out; the bar follows the configuration's training steps, phase by phase,
// labelled with it ("[Sweep 2/4 lr=1e-3: Teacher] ███░░ 120/1175 steps") — a bar counting
// configurations stood still for the whole of each (8 s at the notebook's size on 2 CPU cores,
// 78 s with --models 10: docs/PERFORMANCE.md). A warning
// (--allow-nonfinite keeping a configuration going past a NaN) is said, naming the
// configuration, or that configuration's rows would look like any other's.
class SweepObserver : public Observer {
 public:
  SweepObserver(bool progress, std::FILE* out) : bar_(progress), out_(out) {}
  // The configuration that runs next: its id and its place in the grid.
  void configuration(const std::string& id, size_t number, size_t count) {
    id_ = id;
    label_ = "Sweep " + std::to_string(number) + "/" + std::to_string(count) + " " + id + ": ";
  }
  void phase_begins(const std::string& phase, int64_t epochs, int64_t steps_per_epoch) override {
    bar_.begin(label_ + phase, epochs * steps_per_epoch);
  }
  void step_done() override { bar_.advance(); }
  void phase_ends() override { bar_.clear(); }
  void message(const std::string& line) override {
    bar_.clear();  // the message starts its own line
    std::fprintf(out_, "subliminal: %s: %s\n", id_.c_str(), line.c_str());
  }
  void clear() { bar_.clear(); }

 private:
  ProgressBar bar_;
  std::FILE* out_;
  std::string id_, label_;
};

}  // namespace

void check_sweep_lock(const std::string& prefix) {
  for (const std::string& path : sweep_lock_paths(prefix)) {
    const int fd = open_lock_file(prefix, path, O_RDONLY);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // the usual case: the sweep will create it
      throw InputError("--sweep-out " + path_text(prefix) + ": cannot open " + path_text(path) + " (" +
                       std::strerror(errno) + ")");
    }
    try {
      check_lock_is_ours(prefix, path, fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
  }
}

std::vector<std::vector<std::pair<std::string, std::string>>> sweep_grid(const Config& base) {
  std::vector<SweptKey> keys;
  std::set<std::string> seen;
  for (const std::string& sweep : base.sweeps) {
    keys.push_back(parse_sweep(sweep));
    if (!seen.insert(keys.back().key).second)
      throw UsageError("--sweep: \"" + keys.back().key + "\" is swept twice");
  }
  check_grid_size(keys);  // before anything is made per configuration, or even per value
  for (const SweptKey& k : keys) check_values(base, k);
  std::vector<std::vector<std::pair<std::string, std::string>>> grid{{}};
  for (const SweptKey& k : keys) {
    std::vector<std::vector<std::pair<std::string, std::string>>> next;
    for (const auto& partial : grid)
      for (const std::string& v : k.values) {
        auto row = partial;
        row.push_back({k.key, v});
        next.push_back(row);
      }
    grid = next;
  }
  return grid;
}

std::string config_id(const std::vector<std::pair<std::string, std::string>>& settings) {
  std::string id;
  for (const auto& [k, v] : settings) id += (id.empty() ? "" : ";") + k + "=" + v;
  return id;
}

std::vector<Config> sweep_configs(const Config& base) {
  const auto grid = sweep_grid(base);
  std::vector<Config> configs;
  // Two configurations with the same settings, as the run reads them, are one run made twice,
  // with its rows written twice: a value given twice (lr=1e-3,0.001), or values that the other
  // settings make equal (noise-set=fresh,fixed beside noise=mnist, whose noise is the fixed set).
  std::map<std::string, std::string> made;  // the settings' JSON → the configuration that has them
  for (const auto& settings : grid) {
    Config config = base;
    for (const auto& [k, v] : settings) set_config_value(config, k, v);
    const auto [earlier, first] = made.emplace(settings_key(config), config_id(settings));
    if (!first)
      throw UsageError("--sweep: configurations " + subliminal::quoted(earlier->second) + " and " +
                       quoted(config_id(settings)) +
                       " are the same run (equal settings); give each value once");
    try {
      validate(config);
      if (!config.load_init_path.empty()) {
        MlpParams probe(config.mlp_shape(), config.models, DType::f32, Device::cpu);
        load_init(config.load_init_path, probe);
      }
    } catch (const InputError& e) {
      throw UsageError("--sweep configuration " + config_id(settings) + ": " + e.what());
    }
    configs.push_back(config);
  }
  return configs;
}

namespace {

// Which file a path names now: its device and inode ({0, 0} when there is none).
using FileIdentity = std::pair<dev_t, ino_t>;
FileIdentity identity_of(const std::string& path) {
  struct stat st = {};
  return ::stat(path.c_str(), &st) == 0 ? FileIdentity{st.st_dev, st.st_ino} : FileIdentity{0, 0};
}

// Where rows were made, as a note names it: "cpu (2 hardware threads) with 1 thread".
std::string made_on(const std::string& device, int cpu_threads) {
  if (cpu_threads <= 0) return device;
  return device + " with " + std::to_string(cpu_threads) + (cpu_threads == 1 ? " thread" : " threads");
}

using Grid = std::vector<std::vector<std::pair<std::string, std::string>>>;

// A configuration too large for this machine is found before the first one runs.
void check_every_configuration_fits(const Grid& grid, const std::vector<Config>& configs, Device device) {
  for (size_t k = 0; k < configs.size(); ++k) {
    try {
      check_host_memory(configs[k], device);
    } catch (const OutOfMemoryError& e) {
      throw OutOfMemoryError(config_id(grid[k]) + ": " + e.what());
    }
  }
}

// The CSV is rebuilt from the JSONL, so a CSV with rows beside a JSONL with none would lose them:
// refused.
void refuse_a_csv_without_its_jsonl(const std::string& prefix, const std::string& csv_path) {
  std::ifstream old_csv(csv_path);
  std::string line;
  int64_t csv_rows = -1;  // less the header
  while (std::getline(old_csv, line))
    if (!line.empty()) ++csv_rows;
  if (csv_rows > 0)
    throw UsageError("--sweep-out " + path_text(prefix) + ": its .csv holds " + std::to_string(csv_rows) +
                     " rows but its .jsonl, from which the CSV is rebuilt, holds none; move the CSV away, or "
                     "choose another --sweep-out");
}

// What PREFIX.jsonl means for this grid. A configuration is known by the settings its run reads
// (as sweep_configs compares them), not by its id's text: resumed with the --sweep flags in
// another order, or a value spelt another way (lr=0.001 for lr=1e-3), a sweep finds the rows it
// made instead of running them again and keeping both.
//
// What the files keep: the rows of finished configurations (and of configurations outside this
// grid: an earlier grid of the same sweep), the last of each (configuration, arm). An interrupted
// sweep may have left a torn row, part of a configuration, or CSV rows without their JSONL rows;
// those configurations run again.
struct Resume {
  std::vector<bool> finished;         // [configs]: every arm of configs[k] has its row
  std::vector<bool> runs_again;       // [rows]: file.rows[i] is of a configuration that runs again
  std::vector<std::string> row_keys;  // [rows]: file.rows[i]'s settings key
  std::vector<size_t> kept;           // the rows the files keep, in file order
  size_t already = 0;                 // finished configurations
};

Resume plan_resume(const Config& base, const std::vector<Config>& configs, const SweepFile& file,
                   const std::string& jsonl_path) {
  Resume resume;
  std::vector<std::string> config_keys;  // [configs]
  for (const Config& c : configs) config_keys.push_back(settings_key(c));
  for (const SweepRow& r : file.rows) resume.row_keys.push_back(row_settings_key(base, r, jsonl_path));
  std::map<std::string, std::set<std::string>> done;  // the arms of each configuration's rows
  for (size_t i = 0; i < file.rows.size(); ++i) done[resume.row_keys[i]].insert(file.rows[i].arm);

  std::set<std::string> to_run;  // settings keys
  for (size_t k = 0; k < configs.size(); ++k) {
    const auto it = done.find(config_keys[k]);
    const std::set<std::string> wanted = arms_expected(configs[k]);
    const bool finished =
        it != done.end() && std::includes(it->second.begin(), it->second.end(), wanted.begin(), wanted.end());
    resume.finished.push_back(finished);
    resume.already += finished;
    if (!finished) to_run.insert(config_keys[k]);
  }
  std::map<std::pair<std::string, std::string>, size_t> last;  // (settings, arm) → its last row
  for (size_t i = 0; i < file.rows.size(); ++i) last[{resume.row_keys[i], file.rows[i].arm}] = i;
  for (size_t i = 0; i < file.rows.size(); ++i) {
    resume.runs_again.push_back(to_run.count(resume.row_keys[i]) > 0);
    if (!resume.runs_again[i] && last[{resume.row_keys[i], file.rows[i].arm}] == i) resume.kept.push_back(i);
  }
  return resume;
}

// The CSV's columns: this sweep's keys, then those only kept older rows have.
CsvColumns csv_columns(const Config& base, const Grid& grid, const SweepFile& file, const Resume& resume) {
  CsvColumns columns{&base, {}};
  for (const auto& [key, value] : grid.front()) columns.keys.push_back(key);
  for (size_t i : resume.kept)
    if (file.rows[i].row.contains("settings"))
      for (const auto& [key, value] : file.rows[i].row["settings"].items())
        if (std::find(columns.keys.begin(), columns.keys.end(), key) == columns.keys.end())
          columns.keys.push_back(key);
  return columns;
}

// The JSONL mended to its kept rows and the CSV rebuilt from them, both atomically, before
// anything is appended. Both are rewritten even when unchanged: a name that is one of a file's
// hard links (another prefix's file too, perhaps) becomes a file of its own, so no two sweeps
// append to one file.
void rewrite_kept_rows(const std::string& jsonl_path, const std::string& csv_path, const SweepFile& file,
                       const Resume& resume, const CsvColumns& columns) {
  std::string jsonl_text, csv_text = csv_header(columns);
  for (size_t i : resume.kept) {
    jsonl_text += file.rows[i].line + '\n';
    csv_text += csv_line(file.rows[i].row, columns);
  }
  write_file_atomically(jsonl_path, jsonl_text);
  write_file_atomically(csv_path, csv_text);
}

// The configurations done before, with their results as their runs printed them: rerunning a
// finished sweep shows its table rather than a count.
void say_what_was_done_before(std::FILE* out, const Grid& grid, const std::vector<Config>& configs,
                              const SweepFile& file, const Resume& resume) {
  std::map<std::string, std::string> results_of;  // a configuration's settings → its results' text
  for (size_t i : resume.kept)
    results_of[resume.row_keys[i]] += result_text(file.rows[i].arm, file.rows[i].row.value("test_acc", 0.0),
                                                  file.rows[i].row.value("ci95", 0.0));
  for (size_t k = 0; k < grid.size(); ++k)
    if (resume.finished[k])
      std::fprintf(out, "%s:%s (done before)\n", config_id(grid[k]).c_str(),
                   results_of[settings_key(configs[k])].c_str());
}

std::string comma_list(const std::set<std::string>& items) {
  std::string list;
  for (const std::string& item : items) list += (list.empty() ? "" : ", ") + item;
  return list;
}

// Rows are comparable to the last digit only when one device made them all (another device, or
// another CPU, rounds differently; on the CPU, so do other --threads, which cut the GEMMs
// otherwise), and one build (another commit, or uncommitted changes, may differ for more than
// rounding). Resuming elsewhere or with another build is allowed, and said, when anything is
// left to run. Each row names its device (on the CPU its threads) and its build; rows written
// before they did are not counted.
void note_rows_made_elsewhere(std::FILE* out, const SweepFile& file, const Resume& resume,
                              const std::string& this_device, int this_threads) {
  std::set<std::string> other_devices, other_builds;
  for (size_t i = 0; i < file.rows.size(); ++i) {
    const nlohmann::json& row = file.rows[i].row;
    if (resume.runs_again[i]) continue;
    if (row.contains("device") && row["device"].is_string()) {
      const int threads =  // 0: not known (a GPU's row, or one written before rows named their threads)
          row.contains("cpu_threads") && row["cpu_threads"].is_number_integer()
              ? row["cpu_threads"].get<int>()
              : 0;
      if (row["device"] != this_device || (threads != 0 && threads != this_threads))
        other_devices.insert(made_on(row["device"].get<std::string>(), threads));
    }
    if (row.contains("commit") && row["commit"].is_string() && row["commit"] != kBuildCommit)
      other_builds.insert(row["commit"].get<std::string>());
  }
  if (resume.already == resume.finished.size()) return;  // nothing runs: nothing to mix
  if (!other_devices.empty())
    std::fprintf(out,
                 "Sweep: note: rows already there were made on %s, the rest run on %s; their "
                 "accuracies may differ for that reason alone (training amplifies last-bit differences: one "
                 "model's student by several points)\n",
                 comma_list(other_devices).c_str(), made_on(this_device, this_threads).c_str());
  if (!other_builds.empty())
    std::fprintf(out,
                 "Sweep: note: rows already there were made by the build of %s, the rest by this one, %s\n",
                 comma_list(other_builds).c_str(), kBuildCommit);
}

// A configuration's rows, one per arm, as the JSONL and the CSV hold them, and its console line.
struct ConfigurationRows {
  std::string jsonl, csv, console;
};

// What every row of one sweep run names besides its results.
// The settings a configuration's run actually uses, as text: with --epochs-distill 0 no student
// is distilled, so the distillation's own settings change nothing, and configurations that
// differ only in them are one run (a grid of epochs-distill=0,5 × temperature=1,2,4 holds three
// such at 0 epochs: it runs one, and writes its results under each).
std::string run_key(Config config) {
  if (config.epochs_distill == 0) {
    const Config defaults;
    config.temperature = defaults.temperature;
    config.divergence = defaults.divergence;
    config.weight_decay = defaults.weight_decay;
    config.noise = defaults.noise;
    config.noise_set = defaults.noise_set;
  }
  return settings_key(config);
}

// Each configuration reads --load-init again: a file replaced while the sweep runs would train
// the rest from another init under rows naming the first. Checked before and after each
// configuration, so that a row's init_file is the file its run read.
void refuse_a_changed_init_file(const Config& base, const MadeFrom& made_from, const std::string& id) {
  if (base.load_init_path.empty()) return;
  const std::string now = init_file_fingerprint(base.load_init_path);
  if (now != made_from.init_file)
    throw InputError(
        "--load-init " + path_text(base.load_init_path) + " changed while the sweep ran (\"" +
        made_from.init_file + "\" when it began, \"" + now + "\" at configuration " + id +
        "); the configurations before it are written, the rest not: restore the file and rerun to "
        "resume");
}

struct RowContext {
  const nlohmann::json& base_settings;
  const std::string& device;
  const MadeFrom& made_from;
  int cpu_threads;  // 0 on a GPU
  const CsvColumns& columns;
};

ConfigurationRows rows_of(const std::vector<std::pair<std::string, std::string>>& settings,
                          const Results& results, double seconds, const RowContext& context) {
  const std::string id = config_id(settings);
  ConfigurationRows rows{"", "", id + ":"};
  for (const auto& [arm, acc] : results.final_acc) {
    const Stats s = summarize(acc);
    nlohmann::json row = {{"config", id},
                          {"arm", arm},
                          {"test_acc", s.mean},
                          {"ci95", s.ci95},
                          {"std", s.std},
                          {"n", s.n},
                          {"ci95_t", s.ci95_t},
                          {"seconds", seconds},
                          {"per_model", acc},
                          {"base", context.base_settings},
                          {"device", context.device},
                          {"data", context.made_from.data}};
    if (!context.made_from.init_file.empty()) row["init_file"] = context.made_from.init_file;
    if (context.cpu_threads > 0) row["cpu_threads"] = context.cpu_threads;
    row["commit"] = kBuildCommit;  // the build that made the row (apps/subliminal/build_info.h)
    for (const auto& [key, value] : settings) row["settings"][key] = value;
    rows.jsonl += json_text(row) + '\n';
    rows.csv += csv_line(row, context.columns);
    rows.console += result_text(arm, s.mean, s.ci95);
  }
  return rows;
}

// PREFIX.jsonl and PREFIX.csv, open for appending. A configuration's rows go out in one write to
// each, then are flushed: an interrupted sweep leaves whole configurations, or a part that
// resuming drops and runs again.
class RowFiles {
 public:
  RowFiles(const std::string& prefix, const std::string& jsonl_path, const std::string& csv_path)
      : prefix_(prefix), jsonl_(jsonl_path, std::ios::app), csv_(csv_path, std::ios::app) {
    if (!csv_ || !jsonl_)
      throw InputError("--sweep-out " + path_text(prefix_) + ": cannot open its .csv/.jsonl for appending");
    opened_ = {{jsonl_path, identity_of(jsonl_path)}, {csv_path, identity_of(csv_path)}};
  }

  void append(const std::string& id, const ConfigurationRows& rows) {
    errno = 0;
    jsonl_ << rows.jsonl << std::flush;  // the JSONL first: it is what resuming reads
    csv_ << rows.csv << std::flush;
    if (!csv_ || !jsonl_)  // a full disk: stop rather than report rows that are not there
      throw InputError("--sweep-out " + path_text(prefix_) + ": writing its .csv/.jsonl failed after " + id +
                       (errno ? std::string(" (") + std::strerror(errno) + ")" : std::string()));
    for (const auto& [path, identity] : opened_)
      if (identity_of(path) != identity)
        throw InputError("--sweep-out " + path_text(prefix_) + ": " + path_text(path) +
                         " was removed or replaced during the sweep, so the rows of " + id +
                         " are not in it; rerun the sweep to run them again");
  }

 private:
  std::string prefix_;
  std::ofstream jsonl_, csv_;
  // The files the rows go to, as they were opened: a file removed or replaced under the sweep
  // would take its later rows with it, unseen.
  std::vector<std::pair<std::string, FileIdentity>> opened_;
};

}  // namespace

int run_sweep(const Config& base, const data::Mnist& mnist, Device device, std::FILE* out) {
  const Grid grid = sweep_grid(base);
  const std::vector<Config> configs = sweep_configs(base);  // in grid order
  check_every_configuration_fits(grid, configs, device);

  const std::string csv_path = base.sweep_out + ".csv", jsonl_path = base.sweep_out + ".jsonl";
  std::vector<std::unique_ptr<SweepLock>> locks;  // no other sweep rewrites these files under this one
  for (const std::string& path : sweep_lock_paths(base.sweep_out))
    locks.push_back(std::make_unique<SweepLock>(base.sweep_out, path));
  const nlohmann::json base_settings = sweep_base(base);
  const MadeFrom made_from{data::mnist_fingerprint(mnist),
                           base.load_init_path.empty() ? "" : init_file_fingerprint(base.load_init_path)};
  const SweepFile file = read_sweep_rows(jsonl_path, base_settings, made_from);
  if (file.rows.empty()) refuse_a_csv_without_its_jsonl(base.sweep_out, csv_path);
  const Resume resume = plan_resume(base, configs, file, jsonl_path);
  const CsvColumns columns = csv_columns(base, grid, file, resume);
  rewrite_kept_rows(jsonl_path, csv_path, file, resume, columns);
  set_interrupt_note(": the configurations that finished are in " + path_text(csv_path) + " and " +
                     path_text(jsonl_path) + "; the same command resumes the sweep");
  RowFiles row_files(base.sweep_out, jsonl_path, csv_path);

  std::fprintf(out, "Sweep: %zu configuration%s (%zu already done) → %s, %s\n", grid.size(),
               grid.size() == 1 ? "" : "s", resume.already, csv_path.c_str(), jsonl_path.c_str());
  say_what_was_done_before(out, grid, configs, file, resume);
  std::fflush(out);
  const std::string this_device = device_description(device);
  const int this_threads = device == Device::cpu ? cpu_threads() : 0;
  note_rows_made_elsewhere(out, file, resume, this_device, this_threads);

  const RowContext context{base_settings, this_device, made_from, this_threads, columns};
  SweepObserver observer(base.progress, stderr);
  // The 0-epoch runs made so far: run_key → the configuration that ran it, and its results.
  std::map<std::string, std::pair<std::string, Results>> ran;
  for (size_t k = 0; k < grid.size(); ++k) {
    if (resume.finished[k]) continue;
    const std::string id = config_id(grid[k]);
    const auto same_run = ran.find(run_key(configs[k]));
    if (same_run != ran.end()) {  // not run again: the same run's results, under this configuration's name
      const ConfigurationRows rows = rows_of(grid[k], same_run->second.second, 0.0, context);
      row_files.append(id, rows);
      std::fprintf(out, "%s (the run of %s: nothing distils)\n", rows.console.c_str(),
                   same_run->second.first.c_str());
      std::fflush(out);
      continue;
    }
    const auto start = std::chrono::steady_clock::now();
    observer.configuration(id, k + 1, grid.size());
    refuse_a_changed_init_file(base, made_from, id);
    const Results results = run_configuration(id, configs[k], mnist, device, observer);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    observer.clear();
    refuse_a_changed_init_file(base, made_from, id);  // read again by the run: its rows must say what it read
    const ConfigurationRows rows = rows_of(grid[k], results, seconds, context);
    row_files.append(id, rows);
    std::fprintf(out, "%s\n", rows.console.c_str());  // said only once its rows are written
    std::fflush(out);
    if (configs[k].epochs_distill == 0) ran.emplace(run_key(configs[k]), std::make_pair(id, results));
  }
  return 0;
}

}  // namespace subliminal::app
