// bench/bench_main.h — the command line the GPU benchmarks share.
//
//   bench_NAME [--json FILE] [--FLAG ...]
//
// A usage error or a machine without a usable GPU is one line on stderr and exit code 2. The
// JSON file is opened before anything is measured: a bad path should not cost the numbers.
#pragma once

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/device.h"

namespace subliminal::bench {

struct BenchArgs {
  std::ofstream json;  // open when --json was given
};

// Reads argv into `args` and sets each of `flags` ("--name", where to record it) that is given;
// returns 0 to go on, or the exit code (2) after saying why.
inline int parse_bench_args(const char* name, int argc, char** argv, BenchArgs& args,
                            const std::vector<std::pair<std::string, bool*>>& flags = {}) {
  std::string usage = std::string("usage: ") + name + " [--json FILE]", json_path;
  for (const auto& [flag, where] : flags) usage += " [" + flag + "]";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bool known = false;
    for (const auto& [flag, where] : flags)
      if (a == flag) *where = known = true;
    if (known) continue;
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "%s\n", usage.c_str());
      return 2;
    }
  }
  std::string why;
  if (!cuda_available(&why)) {
    std::fprintf(stderr, "%s: no usable CUDA GPU (%s)\n", name, why.c_str());
    return 2;
  }
  if (!json_path.empty()) {
    args.json.open(json_path);
    if (!args.json) {
      std::fprintf(stderr, "%s: --json: cannot write %s\n", name, json_path.c_str());
      return 2;
    }
  }
  return 0;
}

}  // namespace subliminal::bench
