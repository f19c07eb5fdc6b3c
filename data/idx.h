// data/idx.h — reading IDX files, the format MNIST ships in, raw or gzip-compressed.
//
// An IDX file is a 4-byte magic, one big-endian u32 per dimension, then the values, row-major:
//
//   magic  = 00 00 TT RR     TT: value type (0x08 = unsigned byte, the only type MNIST uses)
//                            RR: rank, the number of dimensions that follow
//   labels:  00 00 08 01 | count            | count bytes
//   images:  00 00 08 03 | count, rows, cols | count*rows*cols bytes
//
// Every file is treated as hostile: the header is checked before anything is allocated, the
// declared size must match the bytes present exactly, and a gzip stream is inflated
// incrementally, so a tiny file that claims (or expands to) gigabytes costs no more memory than
// the bytes it really holds. Any defect throws subliminal::DataError with a one-line message
// that names the file and the defect; nothing is printed and no partial result is returned.
#pragma once

#include <cstdint>     // uint8_t, uint32_t, uint64_t
#include <filesystem>  // std::filesystem::path
#include <vector>      // std::vector

namespace subliminal::data {

// The two magics MNIST uses: unsigned bytes (type 0x08) of rank 1 (labels) and rank 3 (images).
inline constexpr uint32_t kIdxMagicLabels = 0x00000801;
inline constexpr uint32_t kIdxMagicImages = 0x00000803;

// The contents of one IDX file.
struct IdxFile {
  std::vector<uint32_t> dims;   // e.g. {60000, 28, 28} for images, {60000} for labels
  std::vector<uint8_t> values;  // product(dims) bytes, row-major
};

// How much a file may claim before we refuse it. The default (1 GiB) is 20x the largest MNIST
// file; a header declaring more is refused before a single payload byte is allocated.
struct IdxLimits {
  uint64_t max_payload_bytes = uint64_t(1) << 30;
};

// Reads a raw or gzip IDX file. Gzip is detected by its magic bytes (1f 8b), not by the name;
// concatenated gzip members are joined, as gunzip does. expected_magic is kIdxMagicLabels or
// kIdxMagicImages: the file's type code must be 0x08 and its rank must equal expected_magic's.
// Throws DataError for a missing, unreadable or non-regular file (directory, FIFO, device: all
// refused before opening for read, so a FIFO cannot hang us) and for any defect in the bytes.
IdxFile read_idx(const std::filesystem::path& path, uint32_t expected_magic, IdxLimits limits = {});

}  // namespace subliminal::data
