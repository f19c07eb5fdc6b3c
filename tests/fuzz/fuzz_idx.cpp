// tests/fuzz/fuzz_idx.cpp — libFuzzer target for the IDX reader (raw and gzip).
//
// The reader takes a path (it checks file types and sizes before reading), so each input is
// written to a private file first. A DataError is the expected answer to a bad file; any
// other exception, a crash, a sanitizer report, a hang or a large allocation is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "data/idx.h"
#include "engine/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/subliminal_fuzz_idx_" + std::to_string(getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  // A small payload cap keeps each run fast; the cap's own check is part of what is fuzzed.
  subliminal::data::IdxLimits limits{uint64_t(1) << 20};
  for (uint32_t magic : {subliminal::data::kIdxMagicLabels, subliminal::data::kIdxMagicImages}) {
    try {
      subliminal::data::read_idx(path, magic, limits);
    } catch (const subliminal::DataError&) {
    }
  }
  return 0;
}
