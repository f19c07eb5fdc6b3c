// tests/idx_files.h — building IDX files byte by byte for the reader's tests: a header of
// big-endian words, then the payload; written raw or as gzip members.
#pragma once

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>           // uint8_t, uint32_t
#include <filesystem>        // std::filesystem::path
#include <fstream>           // std::ofstream
#include <initializer_list>  // std::initializer_list
#include <string>            // std::string
#include <vector>            // std::vector

#include "engine/error.h"  // DataError

namespace subliminal::test {

using subliminal::DataError;

using Bytes = std::vector<uint8_t>;

// magic, then each dim as a big-endian u32, then the payload.
inline Bytes idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims, const Bytes& payload) {
  Bytes bytes;
  auto append = [&bytes](uint32_t value) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(uint8_t(value >> shift));
  };
  append(magic);
  for (uint32_t dim : dims) append(dim);
  bytes.insert(bytes.end(), payload.begin(), payload.end());
  return bytes;
}

inline void write_raw(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Writes bytes as one gzip member; mode "ab" appends a second member, as `cat a.gz b.gz` would.
inline void write_gz(const std::filesystem::path& path, const Bytes& bytes, const char* mode = "wb") {
  gzFile gz = gzopen(path.c_str(), mode);
  ASSERT_NE(gz, nullptr) << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(gz, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  }
  ASSERT_EQ(gzclose(gz), Z_OK);
}

// Runs f, expecting a DataError with a one-line message that contains every needle.
template <class F>
void expect_data_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected a DataError, but nothing was thrown";
  } catch (const DataError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "message lacks \"" << needle << "\": " << message;
    }
  }
}
#define EXPECT_DATA_ERROR(statement, ...)                                             \
  do {                                                                                \
    SCOPED_TRACE(#statement);                                                         \
    ::subliminal::test::expect_data_error([&] { (void)(statement); }, {__VA_ARGS__}); \
  } while (0)

}  // namespace subliminal::test
