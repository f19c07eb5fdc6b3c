// engine/safetensors.h — reading and writing the safetensors format (Hugging Face's simple,
// safe tensor file: PyTorch loads it with safetensors.torch.load_file).
//
// Layout: an 8-byte little-endian header length H, H bytes of JSON
//   {"name": {"dtype": "F32", "shape": [256, 784], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// and the data: each tensor's little-endian bytes at [begin, end) after the header. The
// reader trusts nothing: header size, JSON, dtypes, shapes, offsets, overlaps and holes are
// all checked against the file's real size before any tensor memory is allocated.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace subliminal {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

struct SafetensorsFile {
  std::vector<NamedTensor> tensors;  // on the CPU, sorted by name
  std::map<std::string, std::string> metadata;
};

struct SafetensorsLimits {
  uint64_t max_header_bytes = 100'000'000;          // safetensors' own MAX_HEADER_SIZE
  uint64_t max_file_bytes = uint64_t(2) << 30;      // far above any checkpoint this app writes
};

// Reads a whole file. Throws DataError naming the file and the defect.
SafetensorsFile read_safetensors(const std::filesystem::path& path, SafetensorsLimits limits = {});
// The same from bytes in memory (the fuzz target uses this); `name` is used in messages.
SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name,
                                  SafetensorsLimits limits = {});

// Writes the tensors (any device; F32, F64, I32, I64, U8) atomically: a temporary file in
// the same directory, flushed, then renamed over `path`. With overwrite = false an existing
// file is an InputError and is left untouched.
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite);

// Writes `contents` to `path` atomically (temporary file + fsync + rename); used for reports too.
void write_file_atomically(const std::filesystem::path& path, const std::string& contents);

// Removes the temporary file of a write_file_atomically in progress, if there is one; for a
// handler of a signal that ends the program (SIGINT, SIGTERM, ...), so that a kill mid-write
// leaves nothing behind. Async-signal-safe.
void remove_unfinished_file() noexcept;

// The file a name reaches: where the chain of symbolic links starting at `path` ends, absolute
// and normalised, whether that file exists yet or not (write_file_atomically writes there).
// Two names of one file give the same path.
std::filesystem::path resolved_path(const std::filesystem::path& path);

// What write_file_atomically(path, ...) would refuse, found now (not a regular file, a directory
// where no file can be created, a name too long): it creates its temporary file and removes it.
void check_file_can_be_written(const std::filesystem::path& path);

}  // namespace subliminal
