// data/idx.cpp — the IDX reader: open the file safely, choose a byte source (raw or gzip),
// check the header, then read exactly the declared payload.
//
// Top to bottom:
//   OpenFile    — a read-only descriptor on a regular file; refuses directories, FIFOs, devices
//   ByteSource  — "the next n bytes": RawSource reads the file, GzipSource inflates it
//   header      — magic and dimensions, checked before anything is allocated
//   payload     — exactly the declared bytes; fewer is "truncated", more is "trailing"
//   read_idx    — ties them together
#include "data/idx.h"

#include <fcntl.h>     // open, fcntl, O_RDONLY, O_CLOEXEC, O_NONBLOCK
#include <sys/stat.h>  // fstat, S_ISREG
#include <unistd.h>    // read, pread, close
#include <zlib.h>      // z_stream, inflateInit2, inflate, inflateReset, inflateEnd

#include <algorithm>     // std::min, std::copy
#include <cerrno>        // errno, EINTR
#include <cstdint>       // UINT64_MAX, SIZE_MAX
#include <cstdio>        // std::snprintf
#include <new>           // std::bad_alloc
#include <optional>      // std::optional
#include <string>        // std::string, std::to_string
#include <system_error>  // std::error_code, std::generic_category
#include <utility>       // std::move

#include "engine/error.h"  // subliminal::DataError, subliminal::Error, path_text

namespace subliminal::data {
namespace {

namespace fs = std::filesystem;

// Disk reads happen in pieces this large: few syscalls, and a bounded input buffer for zlib.
constexpr size_t kReadChunk = size_t(1) << 20;  // 1 MiB
// A gzip payload is inflated into pieces this large, each allocated only once the previous one
// is full, so memory follows the bytes that really arrive rather than what the header claims.
constexpr size_t kInflatePiece = size_t(8) << 20;  // 8 MiB
// Past the declared payload of a gzip stream we count trailing bytes for the message, but stop
// here: a stream that keeps expanding must not keep us busy.
constexpr uint64_t kTrailingCountCap = uint64_t(16) << 20;  // 16 MiB

// ---- Messages -------------------------------------------------------------------------------

[[noreturn]] void fail(const fs::path& path, const std::string& defect) {
  throw DataError(path_text(path.string()) + ": " + defect);
}

std::string errno_text(int error_number) {
  return std::error_code(error_number, std::generic_category()).message();
}

std::string hex(uint32_t value, int digits) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%0*x", digits, value);
  return text;
}

// {60000, 28, 28} -> "60000x28x28"
std::string dims_text(const std::vector<uint32_t>& dims) {
  std::string text;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) text += 'x';
    text += std::to_string(dims[i]);
  }
  return text;
}

std::string describe(fs::file_type type) {
  switch (type) {
    case fs::file_type::directory:
      return "a directory";
    case fs::file_type::fifo:
      return "a FIFO (named pipe)";
    case fs::file_type::character:
      return "a character device";
    case fs::file_type::block:
      return "a block device";
    case fs::file_type::socket:
      return "a socket";
    default:
      return "of an unknown type";
  }
}

// ---- OpenFile -------------------------------------------------------------------------------

// A read-only descriptor on a regular file, closed on destruction.
class OpenFile {
 public:
  explicit OpenFile(const fs::path& path) : path_(path) {
    // Look before opening: opening a FIFO for reading blocks until a writer appears, and reading
    // a directory or a device makes no sense. status() follows symlinks, as open() will.
    std::error_code error;
    const fs::file_status status = fs::status(path, error);
    if (status.type() == fs::file_type::not_found) fail(path, "no such file");
    if (error) fail(path, "cannot inspect the file: " + error.message());
    if (status.type() != fs::file_type::regular) {
      fail(path, "is " + describe(status.type()) + ", not a regular file");
    }
    // O_NONBLOCK in case the path was swapped for a FIFO since the check: open() must not wait.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail(path, "cannot open for reading: " + errno_text(errno));
    struct stat info {};
    if (::fstat(fd_, &info) != 0 || !S_ISREG(info.st_mode)) {
      ::close(fd_);
      fail(path, "is not a regular file");
    }
    size_ = uint64_t(info.st_size);
    // Regular files ignore O_NONBLOCK; clear it anyway so read() has its plain meaning.
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  }
  ~OpenFile() { ::close(fd_); }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;

  const fs::path& path() const { return path_; }
  uint64_t size() const { return size_; }

  // True when the first two bytes are gzip's magic 1f 8b. pread leaves the offset where it was.
  bool starts_with_gzip_magic() const {
    uint8_t first[2] = {0, 0};
    return ::pread(fd_, first, 2, 0) == 2 && first[0] == 0x1f && first[1] == 0x8b;
  }

  // Reads up to n bytes from the current offset; returns fewer only at the end of the file.
  size_t read(uint8_t* dst, size_t n) {
    size_t total = 0;
    while (total < n) {
      const ssize_t got = ::read(fd_, dst + total, n - total);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(path_, "read error: " + errno_text(errno));
      if (got == 0) break;
      total += size_t(got);
    }
    return total;
  }

 private:
  fs::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// ---- Byte sources ---------------------------------------------------------------------------

// The bytes of an IDX file as the parser sees them, after any decompression.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Copies the next n bytes to dst; returns fewer only when the data end.
  virtual size_t read(uint8_t* dst, size_t n) = 0;
  // How many bytes are left, when that is known without reading them (raw files).
  virtual std::optional<uint64_t> bytes_left() const = 0;
  // Where the bytes live, for messages: "the file" or "the decompressed gzip stream".
  virtual const char* holder() const = 0;
};

// An uncompressed file: its size is known up front, so the payload size is checked before
// anything is allocated.
class RawSource final : public ByteSource {
 public:
  explicit RawSource(OpenFile& file) : file_(file) {}
  size_t read(uint8_t* dst, size_t n) override {
    const size_t got = file_.read(dst, n);
    offset_ += got;
    return got;
  }
  std::optional<uint64_t> bytes_left() const override {
    return file_.size() > offset_ ? file_.size() - offset_ : 0;
  }
  const char* holder() const override { return "the file"; }

 private:
  OpenFile& file_;
  uint64_t offset_ = 0;
};

// A gzip file, inflated as it is read; the uncompressed size is unknown until the end. Errors in
// the stream (bad deflate data, CRC or length mismatch, a cut-off member, garbage after the last
// member) are DataErrors naming the file.
class GzipSource final : public ByteSource {
 public:
  explicit GzipSource(OpenFile& file) : file_(file), input_(kReadChunk) {
    // 16 + MAX_WBITS: expect the gzip wrapper (header, CRC-32, length), not zlib or raw deflate.
    if (inflateInit2(&stream_, 16 + MAX_WBITS) != Z_OK) {
      throw Error(path_text(file_.path().string()) + ": zlib could not start an inflate stream");
    }
  }
  ~GzipSource() override { inflateEnd(&stream_); }
  GzipSource(const GzipSource&) = delete;
  GzipSource& operator=(const GzipSource&) = delete;

  size_t read(uint8_t* dst, size_t n) override {
    size_t produced = 0;
    while (produced < n && !finished_) {
      if (stream_.avail_in == 0 && refill() == 0) {
        fail(file_.path(), "truncated gzip stream: the file ends in the middle of a compressed member");
      }
      const size_t room = std::min(n - produced, size_t(1) << 30);  // avail_out is a 32-bit uInt
      stream_.next_out = dst + produced;
      stream_.avail_out = uInt(room);
      const int status = inflate(&stream_, Z_NO_FLUSH);
      produced += room - stream_.avail_out;
      if (status == Z_STREAM_END) {
        next_member_or_finish();
      } else if (status == Z_DATA_ERROR || status == Z_NEED_DICT) {
        fail(file_.path(),
             std::string("corrupt gzip stream (zlib: ") + (stream_.msg ? stream_.msg : "invalid data") + ")");
      } else if (status == Z_MEM_ERROR) {
        throw std::bad_alloc();
      } else if (status != Z_OK && status != Z_BUF_ERROR) {  // Z_BUF_ERROR: input ran out; refill
        throw Error(path_text(file_.path().string()) + ": zlib inflate failed with code " +
                    std::to_string(status));
      }
    }
    return produced;
  }
  std::optional<uint64_t> bytes_left() const override { return std::nullopt; }
  const char* holder() const override { return "the decompressed gzip stream"; }

 private:
  // Moves unconsumed input to the front of the buffer and appends what the file has next.
  // Returns how many new bytes were read (0 at the end of the file).
  size_t refill() {
    const size_t kept = stream_.avail_in;
    if (kept > 0 && stream_.next_in != input_.data()) {
      std::copy(stream_.next_in, stream_.next_in + kept, input_.begin());
    }
    const size_t got = file_.read(input_.data() + kept, input_.size() - kept);
    compressed_read_ += got;
    stream_.next_in = input_.data();
    stream_.avail_in = uInt(kept + got);
    return got;
  }

  // A gzip member just ended. gunzip joins concatenated members, and so do we; anything else
  // after a member is garbage and is refused rather than ignored.
  void next_member_or_finish() {
    if (stream_.avail_in < 2) refill();
    if (stream_.avail_in == 0) {
      finished_ = true;
      return;
    }
    if (stream_.avail_in >= 2 && stream_.next_in[0] == 0x1f && stream_.next_in[1] == 0x8b) {
      inflateReset(&stream_);
      return;
    }
    const uint64_t unread = file_.size() > compressed_read_ ? file_.size() - compressed_read_ : 0;
    fail(file_.path(),
         std::to_string(stream_.avail_in + unread) + " bytes of trailing garbage after the gzip stream");
  }

  OpenFile& file_;
  std::vector<uint8_t> input_;  // compressed bytes read from the file, not yet inflated
  z_stream stream_{};           // zalloc/zfree/opaque null: zlib's own allocator
  uint64_t compressed_read_ = 0;
  bool finished_ = false;
};

// ---- Header ---------------------------------------------------------------------------------

uint32_t big_endian_u32(const uint8_t* bytes) {
  return uint32_t(bytes[0]) << 24 | uint32_t(bytes[1]) << 16 | uint32_t(bytes[2]) << 8 | bytes[3];
}

// A magic is 00 00 TT RR: zero, zero, type code, rank.
void check_magic(const fs::path& path, uint32_t magic, uint32_t expected_magic) {
  if ((magic >> 16) != 0) {
    fail(path, "bad magic " + hex(magic, 8) + ": not an IDX file (expected " + hex(expected_magic, 8) + ")");
  }
  const uint32_t type_code = (magic >> 8) & 0xff;
  if (type_code != 0x08) {
    fail(path, "bad magic " + hex(magic, 8) + ": value type code " + hex(type_code, 2) +
                   " is not 0x08 (unsigned byte), the only type this reader accepts");
  }
  const uint32_t rank = magic & 0xff, expected_rank = expected_magic & 0xff;
  if (rank != expected_rank) {
    fail(path, "bad magic " + hex(magic, 8) + ": rank " + std::to_string(rank) + " but expected rank " +
                   std::to_string(expected_rank) + " (magic " + hex(expected_magic, 8) + ")");
  }
}

// Reads the magic and the dimensions. Stops at the first defect, before any payload allocation.
std::vector<uint32_t> read_header(ByteSource& source, const fs::path& path, uint32_t expected_magic) {
  uint8_t magic_bytes[4];
  const size_t magic_got = source.read(magic_bytes, 4);
  if (magic_got < 4) {
    fail(path, std::string("truncated header: ") + source.holder() + " holds " + std::to_string(magic_got) +
                   " bytes, fewer than the 4-byte magic");
  }
  const uint32_t magic = big_endian_u32(magic_bytes);
  check_magic(path, magic, expected_magic);

  const uint32_t rank = magic & 0xff;  // at most 255 dimensions: a 1 KiB read at worst
  std::vector<uint8_t> dim_bytes(4 * size_t(rank));
  const size_t dims_got = source.read(dim_bytes.data(), dim_bytes.size());
  if (dims_got < dim_bytes.size()) {
    fail(path, "truncated header: magic " + hex(magic, 8) + " promises " + std::to_string(rank) +
                   " dimensions (" + std::to_string(4 + dim_bytes.size()) + " header bytes) but " +
                   source.holder() + " holds only " + std::to_string(4 + dims_got));
  }
  std::vector<uint32_t> dims(rank);
  for (uint32_t i = 0; i < rank; ++i) dims[i] = big_endian_u32(&dim_bytes[4 * size_t(i)]);
  return dims;
}

// The payload size the dimensions declare, refusing zero dimensions, overflow and absurd sizes.
uint64_t declared_payload_bytes(const fs::path& path, const std::vector<uint32_t>& dims,
                                const IdxLimits& limits) {
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == 0) {
      fail(path, "zero dimension: dimension " + std::to_string(i) + " of " + dims_text(dims) +
                     " is 0, so the file would hold no values");
    }
  }
  uint64_t product = 1;
  for (uint32_t dim : dims) {
    if (product > UINT64_MAX / dim) {
      fail(path, "dimensions " + dims_text(dims) + " overflow: their product does not fit in 64 bits");
    }
    product *= dim;
  }
  if (product > limits.max_payload_bytes || product > SIZE_MAX) {
    fail(path, "declared payload of " + std::to_string(product) + " bytes (dims " + dims_text(dims) +
                   ") exceeds the limit of " + std::to_string(limits.max_payload_bytes) + " bytes");
  }
  return product;
}

// ---- Payload --------------------------------------------------------------------------------

[[noreturn]] void fail_truncated(const fs::path& path, const ByteSource& source, uint64_t declared,
                                 const std::vector<uint32_t>& dims, uint64_t present) {
  fail(path, "truncated: declared " + std::to_string(declared) + " bytes of data (dims " + dims_text(dims) +
                 ") after the header but " + source.holder() + " holds only " + std::to_string(present));
}

[[noreturn]] void fail_trailing(const fs::path& path, const ByteSource& source, uint64_t declared,
                                const std::vector<uint32_t>& dims, const std::string& count) {
  fail(path, count + " trailing bytes in " + source.holder() + " after the declared " +
                 std::to_string(declared) + " bytes of data (dims " + dims_text(dims) + ")");
}

// A raw file: sizes are compared before allocating, then the payload is read in one go.
std::vector<uint8_t> read_known_size_payload(ByteSource& source, const fs::path& path, uint64_t declared,
                                             const std::vector<uint32_t>& dims, uint64_t present) {
  if (present < declared) fail_truncated(path, source, declared, dims, present);
  if (present > declared) fail_trailing(path, source, declared, dims, std::to_string(present - declared));
  std::vector<uint8_t> values(declared);
  const size_t got = source.read(values.data(), values.size());
  if (got < declared) fail_truncated(path, source, declared, dims, got);  // the file shrank meanwhile
  return values;
}

// A gzip stream: inflate piece by piece, so a stream that ends early costs only what it held;
// then insist the stream ends exactly there (which also checks the last member's CRC); only then
// join the pieces into one buffer.
std::vector<uint8_t> read_streamed_payload(ByteSource& source, const fs::path& path, uint64_t declared,
                                           const std::vector<uint32_t>& dims) {
  std::vector<std::vector<uint8_t>> pieces;
  uint64_t arrived = 0;
  while (arrived < declared) {
    const size_t wanted = size_t(std::min<uint64_t>(kInflatePiece, declared - arrived));
    std::vector<uint8_t> piece(wanted);
    const size_t got = source.read(piece.data(), wanted);
    piece.resize(got);
    arrived += got;
    pieces.push_back(std::move(piece));
    if (got < wanted) break;
  }
  if (arrived < declared) fail_truncated(path, source, declared, dims, arrived);

  // Count a bounded number of extra bytes: reading one more than the cap tells "N" from "more than N".
  std::vector<uint8_t> scratch(kReadChunk);
  uint64_t trailing = 0;
  while (trailing <= kTrailingCountCap) {
    const size_t got = source.read(scratch.data(), scratch.size());
    trailing += got;
    if (got < scratch.size()) break;
  }
  if (trailing > kTrailingCountCap) {
    fail_trailing(path, source, declared, dims, "more than " + std::to_string(kTrailingCountCap));
  }
  if (trailing > 0) fail_trailing(path, source, declared, dims, std::to_string(trailing));

  if (pieces.size() == 1) return std::move(pieces.front());
  std::vector<uint8_t> values;
  values.reserve(declared);
  for (std::vector<uint8_t>& piece : pieces) {
    values.insert(values.end(), piece.begin(), piece.end());
    piece = {};  // free as we go: the peak stays near twice the payload, briefly
  }
  return values;
}

IdxFile read_idx_from(ByteSource& source, const fs::path& path, uint32_t expected_magic,
                      const IdxLimits& limits) {
  IdxFile idx;
  idx.dims = read_header(source, path, expected_magic);
  const uint64_t declared = declared_payload_bytes(path, idx.dims, limits);
  if (std::optional<uint64_t> present = source.bytes_left()) {
    idx.values = read_known_size_payload(source, path, declared, idx.dims, *present);
  } else {
    idx.values = read_streamed_payload(source, path, declared, idx.dims);
  }
  return idx;
}

}  // namespace

IdxFile read_idx(const std::filesystem::path& path, uint32_t expected_magic, IdxLimits limits) {
  // A wrong expected_magic is the caller's bug, not the file's defect.
  if ((expected_magic >> 8) != 0x08 || (expected_magic & 0xff) == 0) {
    throw Error("read_idx: expected magic " + hex(expected_magic, 8) +
                " is not an unsigned-byte IDX magic (0x000008RR, rank RR >= 1)");
  }
  OpenFile file(path);
  if (file.size() == 0) fail(path, "empty file (0 bytes), expected an IDX header");
  if (file.starts_with_gzip_magic()) {
    GzipSource source(file);
    return read_idx_from(source, path, expected_magic, limits);
  }
  RawSource source(file);
  return read_idx_from(source, path, expected_magic, limits);
}

}  // namespace subliminal::data
