// apps/subliminal/sweep.cpp — the grid, the rows, resuming.
#include "apps/subliminal/sweep.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "apps/subliminal/checkpoint.h"
#include "apps/subliminal/experiment.h"
#include "apps/subliminal/progress.h"
#include "apps/subliminal/report.h"
#include "engine/safetensors.h"  // resolved_path

namespace subliminal::app {
namespace {

// The keys --sweep may vary (any value flag works; these are the ones the field sweeps).
const std::vector<std::string>& sweepable_keys() {
  static const std::vector<std::string> keys = {
      "lr",    "batch-size", "epochs-teacher", "epochs-distill", "ghosts", "temperature", "weight-decay",
      "noise", "noise-set",  "init-perturb",   "init",           "hidden", "seed",        "models"};
  return keys;
}

bool sweepable(const std::string& key) {
  const auto& keys = sweepable_keys();
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return parts;
    start = at + 1;
  }
}

// What every row of one sweep shares: the settings of the base run (config_json), less the
// swept keys, plus the init file. A row written under other settings is not a result of this
// sweep, whatever its configuration id says.
nlohmann::json sweep_base(const Config& base) {
  nlohmann::json settings = config_json(base);
  for (const std::string& sweep : base.sweeps) {
    std::string key = sweep.substr(0, sweep.find('='));
    std::replace(key.begin(), key.end(), '-', '_');  // flag names → the report's keys
    settings.erase(key);
  }
  // The file, not its spelling: a resume from another folder or as ./init.st is the same sweep.
  settings["load_init"] = base.load_init_path.empty() ? "" : resolved_path(base.load_init_path).string();
  return settings;
}

// The first setting in which two bases differ, "key: old vs new", for the message.
std::string first_difference(const nlohmann::json& old_base, const nlohmann::json& new_base) {
  for (const auto& [key, value] : new_base.items())
    if (!old_base.contains(key) || old_base[key] != value)
      return key + ": " + (old_base.contains(key) ? json_text(old_base[key]) : "(none)") + " vs " +
             json_text(value);
  for (const auto& [key, value] : old_base.items())
    if (!new_base.contains(key)) return key + ": " + json_text(value) + " vs (none)";
  return "";
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

// The arms of each configuration already in the JSONL file. A torn row (an interrupted write;
// resuming ends its line and appends after it) is not a row; its configuration counts as
// unfinished and runs again. Anything else that is not a row of this sweep stops the run:
// resuming on top of it would mix results.
std::map<std::string, std::set<std::string>> rows_done(const std::string& jsonl_path,
                                                       const nlohmann::json& base) {
  std::map<std::string, std::set<std::string>> arms;
  std::ifstream in(jsonl_path);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
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
        !row["arm"].is_string() || !row.contains("test_acc"))
      throw DataError(where + ": not a row of a sweep (needs config, arm and test_acc)");
    if (!row.contains("base"))
      throw UsageError(where +
                       ": a row without the settings of its sweep (\"base\"; written by an older "
                       "subliminal), so it cannot be checked against this one; choose another --sweep-out");
    if (row["base"] != base)
      throw UsageError(where + ": written by a sweep with other settings (" +
                       first_difference(row["base"], base) +
                       "); rerun with that sweep's flags to resume it, or choose another --sweep-out");
    arms[row["config"].get<std::string>()].insert(row["arm"].get<std::string>());
  }
  return arms;
}

// Rows one configuration writes: reference, teacher and one per student arm.
size_t rows_expected(const Config& config) { return 2 + student_arms(config).size(); }

// Appending after a torn last line would glue the next row onto it: end that line first.
void end_torn_line(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in || in.tellg() <= 0) return;
  in.seekg(-1, std::ios::end);
  char last = 0;
  in.get(last);
  if (last != '\n') std::ofstream(path, std::ios::app) << '\n';
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

std::vector<std::vector<std::pair<std::string, std::string>>> sweep_grid(const Config& base) {
  std::vector<std::vector<std::pair<std::string, std::string>>> grid{{}};
  std::set<std::string> seen;
  for (const std::string& sweep : base.sweeps) {
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
    if (!seen.insert(key).second) throw UsageError("--sweep: \"" + key + "\" is swept twice");
    // hidden sizes contain commas themselves: separate its values with ';' instead.
    const std::vector<std::string> values = split(sweep.substr(eq + 1), key == "hidden" ? ';' : ',');
    for (const std::string& v : values) {
      Config probe = base;
      try {
        set_config_value(probe, key, v);  // rejects a bad value now, not halfway through the grid
      } catch (const UsageError& e) {
        throw UsageError("--sweep " + quoted(sweep) + ": " + e.what());
      }
    }
    std::vector<std::vector<std::pair<std::string, std::string>>> next;
    for (const auto& partial : grid)
      for (const std::string& v : values) {
        auto row = partial;
        row.push_back({key, v});
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
  for (const auto& settings : grid) {
    Config config = base;
    for (const auto& [k, v] : settings) set_config_value(config, k, v);
    try {
      validate(config);
      if (!config.load_init_path.empty()) {
        MlpParams probe(config.mlp_shape(), 1, DType::f32, Device::cpu);
        load_init(config.load_init_path, probe);
      }
    } catch (const InputError& e) {
      throw UsageError("--sweep configuration " + config_id(settings) + ": " + e.what());
    }
    configs.push_back(config);
  }
  return configs;
}

int run_sweep(const Config& base, const data::Mnist& mnist, Device device, std::FILE* out) {
  const auto grid = sweep_grid(base);
  const std::vector<Config> configs = sweep_configs(base);  // in grid order

  const std::string csv_path = base.sweep_out + ".csv", jsonl_path = base.sweep_out + ".jsonl";
  const nlohmann::json base_settings = sweep_base(base);
  const std::map<std::string, std::set<std::string>> done = rows_done(jsonl_path, base_settings);
  std::error_code ec;
  const bool new_csv =
      !std::filesystem::exists(csv_path, ec) || std::filesystem::file_size(csv_path, ec) == 0;
  end_torn_line(csv_path);
  end_torn_line(jsonl_path);
  std::ofstream csv(csv_path, std::ios::app), jsonl(jsonl_path, std::ios::app);
  if (!csv || !jsonl)
    throw InputError("--sweep-out " + path_text(base.sweep_out) +
                     ": cannot open its .csv/.jsonl for appending");
  if (new_csv) csv << "config,arm,test_acc,ci95,std,n,seconds\n";

  auto finished = [&](size_t k) {
    auto it = done.find(config_id(grid[k]));
    return it != done.end() && it->second.size() >= rows_expected(configs[k]);
  };
  size_t already = 0;
  for (size_t k = 0; k < grid.size(); ++k) already += finished(k);
  std::fprintf(out, "Sweep: %zu configurations (%zu already done) → %s, %s\n", grid.size(), already,
               csv_path.c_str(), jsonl_path.c_str());
  ProgressBar bar(base.progress);
  bar.begin("Sweep", int64_t(grid.size()));
  Observer quiet;  // per-epoch lines would drown the sweep's own
  for (size_t k = 0; k < grid.size(); ++k) {
    if (finished(k)) {
      bar.advance();
      continue;
    }
    const std::string id = config_id(grid[k]);
    const auto start = std::chrono::steady_clock::now();
    Results results = run_experiment(configs[k], mnist, device, quiet);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bar.clear();
    // All of a configuration's rows go out in one write each, then are flushed: an interrupted
    // sweep leaves whole configurations (at worst one torn last line, which resuming ignores).
    std::ostringstream csv_rows, jsonl_rows;
    std::fprintf(out, "%s:", id.c_str());
    for (const auto& [arm, acc] : results.final_acc) {
      const Stats s = summarize(acc);
      csv_rows << csv_field(id) << ',' << arm << ',' << s.mean << ',' << s.ci95 << ',' << s.std << ',' << s.n
               << ',' << seconds << '\n';
      nlohmann::json row = {{"config", id},       {"arm", arm},       {"test_acc", s.mean},
                            {"ci95", s.ci95},     {"std", s.std},     {"n", s.n},
                            {"seconds", seconds}, {"per_model", acc}, {"base", base_settings}};
      for (const auto& [key, value] : grid[k]) row["settings"][key] = value;
      jsonl_rows << json_text(row) << '\n';
      std::fprintf(out, " %s %.3f±%.3f", arm.c_str(), s.mean, s.ci95);
    }
    csv << csv_rows.str() << std::flush;
    jsonl << jsonl_rows.str() << std::flush;
    if (!csv || !jsonl)  // a full disk: stop rather than report rows that are not there
      throw InputError("--sweep-out " + path_text(base.sweep_out) +
                       ": writing its .csv/.jsonl failed after " + id);
    std::fprintf(out, "\n");
    std::fflush(out);
    bar.advance();
  }
  bar.clear();
  return 0;
}

}  // namespace subliminal::app
