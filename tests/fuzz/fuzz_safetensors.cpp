// tests/fuzz/fuzz_safetensors.cpp — libFuzzer target for the safetensors parser.
// A DataError is the expected answer to a bad file; anything else is a bug.
#include <cstdint>

#include "engine/error.h"
#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  subliminal::SafetensorsLimits limits;
  limits.max_header_bytes = 1 << 16;
  try {
    subliminal::parse_safetensors(data, size, "fuzz-input", limits);
  } catch (const subliminal::DataError&) {
  }
  return 0;
}
