// tests/test_idx.cpp — the IDX reader: good files round-trip, every defect is a DataError whose
// one-line message names the file and the defect, hostile headers and gzip bombs stay cheap.
#include <gtest/gtest.h>
#include <sys/resource.h>  // getrusage: peak memory, to prove nothing big was allocated
#include <sys/stat.h>      // mkfifo, chmod
#include <unistd.h>        // geteuid
#include <zlib.h>          // gzopen, gzwrite, gzclose: tests write their own .gz files

#include <chrono>            // std::chrono::steady_clock
#include <cstdlib>           // mkdtemp
#include <filesystem>        // std::filesystem
#include <fstream>           // std::ofstream, std::ifstream
#include <initializer_list>  // std::initializer_list
#include <string>            // std::string
#include <vector>            // std::vector

#include "data/idx.h"               // read_idx, IdxFile, IdxLimits
#include "engine/error.h"           // subliminal::DataError
#include "tests/as_another_user.h"  // exit_status_as_nobody: the unreadable file, read as another user
#include "tests/idx_files.h"        // idx_bytes, write_raw, write_gz
#include "tests/temp_dir.h"         // TempDir

namespace {

namespace fs = std::filesystem;
using subliminal::DataError;
using subliminal::data::IdxFile;
using subliminal::data::IdxLimits;
using subliminal::data::kIdxMagicImages;
using subliminal::data::kIdxMagicLabels;
using subliminal::data::read_idx;
using subliminal::test::Bytes;
using subliminal::test::idx_bytes;
using subliminal::test::TempDir;
using subliminal::test::write_gz;
using subliminal::test::write_raw;

// ---- Helpers --------------------------------------------------------------------------------

// n bytes of a fixed pattern that no off-by-one can reproduce by accident.
Bytes pattern(size_t n) {
  Bytes bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = uint8_t((i * 131 + 7) % 251);
  return bytes;
}

Bytes read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Peak resident memory of this process so far, in bytes (Linux reports KiB).
uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return uint64_t(usage.ru_maxrss) * 1024;
}

const Bytes kImagesPayload = pattern(3 * 28 * 28);
const Bytes kImagesFile = idx_bytes(kIdxMagicImages, {3, 28, 28}, kImagesPayload);

// ---- Good files -----------------------------------------------------------------------------

TEST(Idx, RawImagesRoundTrip) {
  TempDir dir;
  write_raw(dir / "images", kImagesFile);
  const IdxFile idx = read_idx(dir / "images", kIdxMagicImages);
  EXPECT_EQ(idx.dims, (std::vector<uint32_t>{3, 28, 28}));
  EXPECT_EQ(idx.values, kImagesPayload);
}

TEST(Idx, RawLabelsRoundTrip) {
  TempDir dir;
  const Bytes labels = {5, 0, 4, 1, 9};
  write_raw(dir / "labels", idx_bytes(kIdxMagicLabels, {5}, labels));
  const IdxFile idx = read_idx(dir / "labels", kIdxMagicLabels);
  EXPECT_EQ(idx.dims, (std::vector<uint32_t>{5}));
  EXPECT_EQ(idx.values, labels);
}

TEST(Idx, GzipRoundTrip) {
  TempDir dir;
  write_gz(dir / "images.gz", kImagesFile);
  const IdxFile idx = read_idx(dir / "images.gz", kIdxMagicImages);
  EXPECT_EQ(idx.dims, (std::vector<uint32_t>{3, 28, 28}));
  EXPECT_EQ(idx.values, kImagesPayload);
}

// Larger than one inflate piece (8 MiB), so the pieces are joined in order.
TEST(Idx, GzipLargerThanOnePieceRoundTrip) {
  TempDir dir;
  const Bytes payload = pattern(1000 * 100 * 100);  // 10 MB
  write_gz(dir / "big.gz", idx_bytes(kIdxMagicImages, {1000, 100, 100}, payload));
  EXPECT_EQ(read_idx(dir / "big.gz", kIdxMagicImages).values, payload);
}

TEST(Idx, GzipIsDetectedByContentNotName) {
  TempDir dir;
  write_gz(dir / "compressed-but-named-raw", kImagesFile);
  write_raw(dir / "raw-but-named.gz", kImagesFile);
  EXPECT_EQ(read_idx(dir / "compressed-but-named-raw", kIdxMagicImages).values, kImagesPayload);
  EXPECT_EQ(read_idx(dir / "raw-but-named.gz", kIdxMagicImages).values, kImagesPayload);
}

// gunzip joins concatenated members; the header may even end in one member and go on in the next.
TEST(Idx, ConcatenatedGzipMembersAreJoined) {
  TempDir dir;
  const Bytes first(kImagesFile.begin(), kImagesFile.begin() + 10);
  const Bytes second(kImagesFile.begin() + 10, kImagesFile.end());
  write_gz(dir / "two.gz", first);
  write_gz(dir / "two.gz", second, "ab");
  write_gz(dir / "two.gz", {}, "ab");  // an empty member is legal too
  EXPECT_EQ(read_idx(dir / "two.gz", kIdxMagicImages).values, kImagesPayload);
}

// ---- Header defects -------------------------------------------------------------------------

TEST(Idx, WrongMagicIsRefused) {
  TempDir dir;
  write_raw(dir / "not-idx", idx_bytes(0x12340803, {3, 28, 28}, kImagesPayload));
  EXPECT_DATA_ERROR(read_idx(dir / "not-idx", kIdxMagicImages), "not-idx", "magic", "0x12340803");
  // Both leading bytes must be zero, the second as much as the first.
  write_raw(dir / "second-byte", idx_bytes(0x00340803, {3, 28, 28}, kImagesPayload));
  EXPECT_DATA_ERROR(read_idx(dir / "second-byte", kIdxMagicImages), "second-byte", "not an IDX file");
}

TEST(Idx, WrongTypeCodeIsRefused) {
  TempDir dir;  // 0x0D is float32 in IDX: a valid file, but not one we read
  write_raw(dir / "floats", idx_bytes(0x00000D03, {3, 28, 28}, kImagesPayload));
  EXPECT_DATA_ERROR(read_idx(dir / "floats", kIdxMagicImages), "floats", "type code 0x0d");
}

TEST(Idx, WrongRankIsRefused) {
  TempDir dir;
  write_raw(dir / "labels-not-images", idx_bytes(kIdxMagicLabels, {5}, pattern(5)));
  EXPECT_DATA_ERROR(read_idx(dir / "labels-not-images", kIdxMagicImages), "labels-not-images", "rank 1",
                    "expected rank 3");
}

TEST(Idx, ZeroDimensionIsRefused) {
  TempDir dir;
  write_raw(dir / "zero", idx_bytes(kIdxMagicImages, {3, 0, 28}, {}));
  EXPECT_DATA_ERROR(read_idx(dir / "zero", kIdxMagicImages), "zero", "zero dimension", "3x0x28");
  // The last dimension too, and the only one of a labels file (no values: an empty payload).
  write_raw(dir / "zero-last", idx_bytes(kIdxMagicImages, {3, 28, 0}, {}));
  EXPECT_DATA_ERROR(read_idx(dir / "zero-last", kIdxMagicImages), "zero-last", "zero dimension", "3x28x0");
  write_raw(dir / "no-labels", idx_bytes(kIdxMagicLabels, {0}, {}));
  EXPECT_DATA_ERROR(read_idx(dir / "no-labels", kIdxMagicLabels), "no-labels", "zero dimension");
}

TEST(Idx, DimensionProductOverflowIsRefused) {
  TempDir dir;  // (2^32-1)^3 does not fit in 64 bits
  write_raw(dir / "overflow", idx_bytes(kIdxMagicImages, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {}));
  EXPECT_DATA_ERROR(read_idx(dir / "overflow", kIdxMagicImages), "overflow",
                    "4294967295x4294967295x4294967295");
}

TEST(Idx, AbsurdDeclaredSizeIsRefusedBeforeAllocating) {
  TempDir dir;  // 60000 x 65535 x 65535 = 2.6e14 bytes, in a 16-byte file
  write_raw(dir / "absurd", idx_bytes(kIdxMagicImages, {60000, 65535, 65535}, {}));
  write_gz(dir / "absurd.gz", idx_bytes(kIdxMagicImages, {60000, 65535, 65535}, {}));
  EXPECT_DATA_ERROR(read_idx(dir / "absurd", kIdxMagicImages), "absurd", "exceeds the limit",
                    "257690173500000");
  EXPECT_DATA_ERROR(read_idx(dir / "absurd.gz", kIdxMagicImages), "absurd.gz", "exceeds the limit");
}

TEST(Idx, LimitIsConfigurable) {
  TempDir dir;
  write_raw(dir / "images", kImagesFile);
  EXPECT_DATA_ERROR(read_idx(dir / "images", kIdxMagicImages, IdxLimits{.max_payload_bytes = 1000}), "images",
                    "2352 bytes", "exceeds the limit of 1000 bytes");
  EXPECT_NO_THROW(read_idx(dir / "images", kIdxMagicImages, IdxLimits{.max_payload_bytes = 2352}));
}

// Just under the default 1 GiB limit, but the file holds a few bytes: refused without touching
// anywhere near that much memory, raw or gzip.
TEST(Idx, LargeDeclaredSizeWithTinyFileAllocatesNothingBig) {
  TempDir dir;
  const Bytes header = idx_bytes(kIdxMagicImages, {1300000, 28, 28}, pattern(1000));  // declares 1.02e9
  write_raw(dir / "claims-1gb", header);
  write_gz(dir / "claims-1gb.gz", header);
  const uint64_t peak_before = peak_rss_bytes();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_DATA_ERROR(read_idx(dir / "claims-1gb", kIdxMagicImages), "claims-1gb", "truncated", "1019200000",
                    "holds only 1000");
  EXPECT_DATA_ERROR(read_idx(dir / "claims-1gb.gz", kIdxMagicImages), "claims-1gb.gz", "truncated",
                    "1019200000", "holds only 1000");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  EXPECT_LT(peak_rss_bytes() - peak_before, uint64_t(64) << 20) << "a small file made us allocate a lot";
}

// A gzip bomb: the header declares 1000 bytes, the stream expands to 64 MiB of zeros. The read
// stops soon after the declared size and says so, without holding the expansion in memory.
TEST(Idx, GzipBombStopsAtDeclaredSize) {
  TempDir dir;
  {
    gzFile gz = gzopen((dir / "bomb.gz").c_str(), "wb9");
    ASSERT_NE(gz, nullptr);
    const Bytes header = idx_bytes(kIdxMagicLabels, {1000}, {});
    gzwrite(gz, header.data(), unsigned(header.size()));
    const Bytes zeros(1 << 20, 0);
    for (int i = 0; i < 64; ++i) gzwrite(gz, zeros.data(), unsigned(zeros.size()));
    ASSERT_EQ(gzclose(gz), Z_OK);
  }
  EXPECT_LT(fs::file_size(dir / "bomb.gz"), 200'000u);
  const uint64_t peak_before = peak_rss_bytes();
  EXPECT_DATA_ERROR(read_idx(dir / "bomb.gz", kIdxMagicLabels), "bomb.gz",
                    "more than 16777216 trailing bytes");
  EXPECT_LT(peak_rss_bytes() - peak_before, uint64_t(32) << 20) << "the expansion was held in memory";
}

TEST(Idx, TruncatedHeaderIsRefused) {
  TempDir dir;
  write_raw(dir / "three-bytes", {0x00, 0x00, 0x08});
  EXPECT_DATA_ERROR(read_idx(dir / "three-bytes", kIdxMagicImages), "three-bytes", "truncated header",
                    "holds 3");
  const Bytes cut(kImagesFile.begin(), kImagesFile.begin() + 10);  // magic + 1.5 dims
  write_raw(dir / "half-dims", cut);
  write_gz(dir / "half-dims.gz", cut);
  EXPECT_DATA_ERROR(read_idx(dir / "half-dims", kIdxMagicImages), "half-dims", "truncated header",
                    "16 header bytes", "holds only 10");
  EXPECT_DATA_ERROR(read_idx(dir / "half-dims.gz", kIdxMagicImages), "half-dims.gz", "truncated header");
  write_gz(dir / "inflates-to-nothing.gz", {});
  EXPECT_DATA_ERROR(read_idx(dir / "inflates-to-nothing.gz", kIdxMagicImages), "inflates-to-nothing.gz",
                    "truncated header", "holds 0");
}

// ---- Payload size defects -------------------------------------------------------------------

TEST(Idx, TruncatedPayloadIsRefused) {
  TempDir dir;
  const Bytes cut(kImagesFile.begin(), kImagesFile.end() - 100);
  write_raw(dir / "short", cut);
  write_gz(dir / "short.gz", cut);
  EXPECT_DATA_ERROR(read_idx(dir / "short", kIdxMagicImages), "short", "truncated", "declared 2352 bytes",
                    "holds only 2252");
  EXPECT_DATA_ERROR(read_idx(dir / "short.gz", kIdxMagicImages), "short.gz", "truncated",
                    "declared 2352 bytes", "holds only 2252");
}

TEST(Idx, TrailingBytesAreRefused) {
  TempDir dir;
  Bytes longer = kImagesFile;
  longer.insert(longer.end(), 7, 0xAB);
  write_raw(dir / "long", longer);
  write_gz(dir / "long.gz", longer);
  EXPECT_DATA_ERROR(read_idx(dir / "long", kIdxMagicImages), "long", "7 trailing bytes");
  EXPECT_DATA_ERROR(read_idx(dir / "long.gz", kIdxMagicImages), "long.gz", "7 trailing bytes");
}

// ---- Gzip stream defects --------------------------------------------------------------------

TEST(Idx, CorruptDeflateDataIsRefused) {
  TempDir dir;
  write_gz(dir / "corrupt.gz", kImagesFile);
  Bytes gz = read_all(dir / "corrupt.gz");
  gz[gz.size() / 2] ^= 0xFF;  // the middle of the deflate stream
  write_raw(dir / "corrupt.gz", gz);
  EXPECT_DATA_ERROR(read_idx(dir / "corrupt.gz", kIdxMagicImages), "corrupt.gz", "corrupt gzip stream");
}

TEST(Idx, BadCrcIsRefused) {
  TempDir dir;
  write_gz(dir / "bad-crc.gz", kImagesFile);
  Bytes gz = read_all(dir / "bad-crc.gz");
  gz[gz.size() - 8] ^= 0x01;  // the trailer is CRC-32 then length, 4 bytes each
  write_raw(dir / "bad-crc.gz", gz);
  EXPECT_DATA_ERROR(read_idx(dir / "bad-crc.gz", kIdxMagicImages), "bad-crc.gz", "corrupt gzip stream",
                    "incorrect data check");
}

TEST(Idx, TruncatedGzipIsRefused) {
  TempDir dir;
  write_gz(dir / "cut.gz", kImagesFile);
  const Bytes gz = read_all(dir / "cut.gz");
  write_raw(dir / "cut-mid-stream.gz", Bytes(gz.begin(), gz.begin() + gz.size() / 2));
  write_raw(dir / "cut-in-trailer.gz", Bytes(gz.begin(), gz.end() - 3));  // all data, half the trailer
  EXPECT_DATA_ERROR(read_idx(dir / "cut-mid-stream.gz", kIdxMagicImages), "cut-mid-stream.gz",
                    "truncated gzip stream");
  EXPECT_DATA_ERROR(read_idx(dir / "cut-in-trailer.gz", kIdxMagicImages), "cut-in-trailer.gz",
                    "truncated gzip stream");
  write_raw(dir / "only-magic.gz", {0x1f, 0x8b});
  EXPECT_DATA_ERROR(read_idx(dir / "only-magic.gz", kIdxMagicImages), "only-magic.gz",
                    "truncated gzip stream");
}

TEST(Idx, GarbageAfterGzipIsRefused) {
  TempDir dir;
  write_gz(dir / "garbage.gz", kImagesFile);
  Bytes gz = read_all(dir / "garbage.gz");
  gz.insert(gz.end(), {'j', 'u', 'n', 'k', '\n'});
  write_raw(dir / "garbage.gz", gz);
  EXPECT_DATA_ERROR(read_idx(dir / "garbage.gz", kIdxMagicImages), "garbage.gz",
                    "5 bytes of trailing garbage");
  // Garbage that starts like a gzip member (1f) but is not one (8b) is garbage too.
  gz = read_all(dir / "garbage.gz");
  gz.erase(gz.end() - 5, gz.end());  // the junk appended above
  gz.insert(gz.end(), {0x1f, 'j', 'u', 'n', 'k'});
  write_raw(dir / "garbage.gz", gz);
  EXPECT_DATA_ERROR(read_idx(dir / "garbage.gz", kIdxMagicImages), "garbage.gz",
                    "5 bytes of trailing garbage");
}

// ---- Not a readable regular file ------------------------------------------------------------

TEST(Idx, EmptyFileIsRefused) {
  TempDir dir;
  write_raw(dir / "empty", {});
  EXPECT_DATA_ERROR(read_idx(dir / "empty", kIdxMagicImages), "empty", "empty file");
}

TEST(Idx, DirectoryIsRefused) {
  TempDir dir;
  fs::create_directory(dir / "a-directory");
  EXPECT_DATA_ERROR(read_idx(dir / "a-directory", kIdxMagicImages), "a-directory", "is a directory");
}

// Opening a FIFO for reading would block until a writer appears: the reader must refuse it first.
TEST(Idx, FifoIsRefusedWithoutHanging) {
  TempDir dir;
  ASSERT_EQ(mkfifo((dir / "a-fifo").c_str(), 0600), 0);
  EXPECT_DATA_ERROR(read_idx(dir / "a-fifo", kIdxMagicImages), "a-fifo", "FIFO");
}

TEST(Idx, DeviceIsRefused) {
  EXPECT_DATA_ERROR(read_idx("/dev/zero", kIdxMagicImages), "/dev/zero", "character device");
}

TEST(Idx, MissingFileIsRefused) {
  TempDir dir;
  EXPECT_DATA_ERROR(read_idx(dir / "not-there", kIdxMagicImages), "not-there", "no such file");
}

// A file this user may not read. Root reads anything, so as root (CI) the read is made by user
// 65534 in a child process, which says by its exit status whether the message was right.
TEST(Idx, UnreadableFileIsRefused) {
  TempDir dir;
  write_raw(dir / "secret", kImagesFile);
  ASSERT_EQ(chmod((dir / "secret").c_str(), 0), 0);
  if (geteuid() != 0) {
    EXPECT_DATA_ERROR(read_idx(dir / "secret", kIdxMagicImages), "secret", "cannot open", "ermission denied");
    return;
  }
  std::filesystem::permissions(dir.path(), std::filesystem::perms(0755));
  const int status = subliminal::test::exit_status_as_nobody(dir.path(), X_OK, [&] {
    try {
      read_idx(dir / "secret", kIdxMagicImages);
    } catch (const DataError& e) {
      const std::string message = e.what();
      return message.find("secret") != std::string::npos &&
                     message.find("cannot open") != std::string::npos &&
                     message.find("ermission denied") != std::string::npos
                 ? 0
                 : 1;
    } catch (...) {
      return 2;
    }
    return 3;  // read it
  });
  if (status == -1) GTEST_SKIP() << "user 65534 cannot be made here or cannot reach " << dir.path();
  EXPECT_EQ(status, 0)
      << "as user 65534: 1 = a DataError without the file and 'Permission denied', 2 = another exception, "
         "3 = the file was read";
}

}  // namespace
