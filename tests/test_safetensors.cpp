// tests/test_safetensors.cpp — the safetensors reader and writer: round trips of every dtype,
// a header a third-party parser agrees with, every malformed file refused with a DataError
// naming the file, and atomic, non-clobbering writes.
#include <gtest/gtest.h>
#include <sys/resource.h>  // setrlimit: a file-size limit to stop a write halfway
#include <sys/stat.h>      // stat: inode numbers, to see that a replace is a rename; mkfifo
#include <sys/wait.h>      // waitpid
#include <unistd.h>        // fork, _exit, geteuid, setresuid

#include <csignal>  // signal, SIGXFSZ

#include <algorithm>          // std::sort
#include <cstdint>            // uint8_t, uint64_t
#include <filesystem>         // std::filesystem
#include <map>                // std::map
#include <nlohmann/json.hpp>  // an independent parse of the header the writer produced
#include <string>             // std::string
#include <vector>             // std::vector

#include "engine/safetensors.h"     // read_safetensors, write_safetensors, write_file_atomically
#include "engine/storage.h"         // cpu_allocator_stats: a refused file makes no tensor
#include "tests/as_another_user.h"  // exit_status_as_nobody: another user's file in a sticky folder
#include "tests/test_util.h"        // TempDir, read_text, write_text

namespace {

using namespace subliminal;
using subliminal::test::read_text;
using subliminal::test::TempDir;
using subliminal::test::write_text;
namespace fs = std::filesystem;

const Tensor* find(const SafetensorsFile& file, const std::string& name) {
  for (const NamedTensor& nt : file.tensors)
    if (nt.name == name) return &nt.tensor;
  return nullptr;
}

std::vector<NamedTensor> sample_tensors() {
  return {
      {"weights", Tensor::from_vector(std::vector<float>{1.5f, -2.25f, 3e-8f, 4e20f, 0.0f, -0.0f}, {2, 3})},
      {"doubles", Tensor::from_vector(std::vector<double>{3.141592653589793, -1e-300}, {2})},
      {"labels", Tensor::from_vector(std::vector<int32_t>{7, -1, 2147483647}, {3})},
      {"counter", Tensor::from_vector(std::vector<int64_t>{int64_t(1) << 40}, {1})},
      {"pixels", Tensor::from_vector(std::vector<uint8_t>{0, 128, 255}, {1, 3})},
      {"empty", Tensor::empty({0, 4}, DType::f32)},
  };
}

// Raw bytes of a tensor, for bitwise comparison (−0.0 and 0.0 differ there).
std::string bytes_of(const Tensor& t) { return {static_cast<const char*>(t.raw()), t.bytes()}; }

// What is written is read back bit for bit (−0.0, 3e-8, 2³¹−1 included), with its metadata.
TEST(Safetensors, RoundTripsEveryDtypeTheEmptyTensorAndMetadata) {
  TempDir dir;
  const fs::path path = dir / "model.safetensors";
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"seed", "0"}};
  write_safetensors(path, sample_tensors(), metadata, false);
  const SafetensorsFile file = read_safetensors(path);
  EXPECT_EQ(file.metadata, metadata);
  ASSERT_EQ(file.tensors.size(), sample_tensors().size());
  for (const NamedTensor& original : sample_tensors()) {
    const Tensor* read = find(file, original.name);
    ASSERT_NE(read, nullptr) << original.name;
    EXPECT_EQ(read->dtype(), original.tensor.dtype()) << original.name;
    EXPECT_EQ(read->shape(), original.tensor.shape()) << original.name;
    EXPECT_EQ(bytes_of(*read), bytes_of(original.tensor)) << original.name;
  }
}

// The header as the format defines it, read by a JSON parser rather than by our reader: the
// 8-byte little-endian length, dtype codes, shapes, contiguous offsets, data 8-byte aligned.
TEST(Safetensors, WritesTheHeaderTheFormatDefines) {
  TempDir dir;
  const fs::path path = dir / "one.safetensors";
  const Tensor w = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  write_safetensors(path, {{"net.0.weight", w}}, {{"k", "v"}}, false);
  const std::string bytes = read_text(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = header_bytes << 8 | uint8_t(bytes[size_t(i)]);
  EXPECT_EQ((8 + header_bytes) % 8, 0u);
  const auto header = nlohmann::json::parse(bytes.substr(8, header_bytes));
  EXPECT_EQ(header["net.0.weight"]["dtype"], "F32");
  EXPECT_EQ(header["net.0.weight"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(header["net.0.weight"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(header["__metadata__"]["k"], "v");
  EXPECT_EQ(bytes.size(), 8 + header_bytes + 24);
  EXPECT_EQ(bytes.substr(8 + header_bytes), bytes_of(w));
}

// ---- Malformed files ------------------------------------------------------------------------------

// A file from a header string and data bytes, with the length prefix computed (or overridden).
std::string file_bytes(const std::string& header, const std::string& data, int64_t length = -1) {
  const uint64_t n = length < 0 ? header.size() : uint64_t(length);
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string f32_entry(const std::string& name, const std::string& shape, uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Each defect must be a DataError whose message names the file; `what` must appear in it too.
void expect_defect(const std::string& bytes, const std::string& what) {
  TempDir dir;
  const fs::path path = dir / "bad.safetensors";
  write_text(path, bytes);
  const CpuAllocatorStats before = cpu_allocator_stats();
  try {
    read_safetensors(path);
    ADD_FAILURE() << "no error for a file with: " << what;
  } catch (const DataError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(what), std::string::npos) << "expected \"" << what << "\" in: " << message;
  }
  const CpuAllocatorStats after = cpu_allocator_stats();  // no tensor was made for the file
  EXPECT_EQ(after.fresh_allocations + after.reused_allocations,
            before.fresh_allocations + before.reused_allocations)
      << "tensor memory allocated for a file with: " << what;
}

const std::string kEightBytes(8, '\x01');

// The reader trusts nothing: each defect below is refused with a message naming the file
// and the defect, before any tensor memory is allocated.
TEST(Safetensors, RefusesEveryMalformedFileNamingIt) {
  const std::string good = "{" + f32_entry("a", "[2]", 0, 8) + "}";
  // Control: the well-formed version of the files below is accepted.
  {
    TempDir dir;
    write_text(dir / "good.safetensors", file_bytes(good, kEightBytes));
    EXPECT_EQ(read_safetensors(dir / "good.safetensors").tensors.size(), 1u);
  }
  expect_defect("abc", "shorter than the 8-byte header length");
  expect_defect(file_bytes(good, kEightBytes).substr(0, 20), "runs past the end");  // truncated in the header
  expect_defect(file_bytes(good, kEightBytes).substr(0, 8 + good.size() + 5), "outside");  // truncated data
  expect_defect(file_bytes(good, kEightBytes, int64_t(good.size() + 9)), "runs past the end");
  expect_defect(file_bytes(good, kEightBytes, int64_t(1) << 62), "exceeds");
  expect_defect(file_bytes("{\"a\": [1, 2", ""), "not valid JSON");
  // The JSON parser quotes the bytes it read last; a byte that is not printable ASCII is shown
  // as \xNN, so the message stays one readable line.
  expect_defect(file_bytes("{\"a\xff\n", ""), "\\xff");
  expect_defect(file_bytes("[1, 2, 3]", ""), "not a JSON object");
  // A name twice: one parser keeps the first, another the last, so two readers see two files.
  expect_defect(
      file_bytes("{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("a", "[1]", 0, 4) + "}", kEightBytes),
      "header names \"a\" twice");
  expect_defect(file_bytes("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", "1234"),
                "unsupported dtype");
  expect_defect(file_bytes("{" + f32_entry("a", "[3]", 0, 8) + "}", kEightBytes), "bytes for 3");
  expect_defect(file_bytes("{" + f32_entry("a", "[2]", 0, 8) + "}", "1234"), "outside");
  expect_defect(file_bytes("{" + f32_entry("a", "[2]", 8, 0) + "}", kEightBytes), "outside");
  expect_defect(file_bytes("{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 4, 12) + "}",
                           std::string(12, 'x')),
                "overlaps");
  expect_defect(file_bytes("{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 12, 20) + "}",
                           std::string(20, 'x')),
                "hole");
  expect_defect(file_bytes(good, kEightBytes + "tail"), "belong to no tensor");
  expect_defect(file_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", kEightBytes),
                "bad shape");
  expect_defect(file_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", kEightBytes), "lacks");
  expect_defect(file_bytes("{" + f32_entry("a", "[1,1,1,1,1,1,1,1,2]", 0, 8) + "}", kEightBytes),
                "bad shape");
  expect_defect(file_bytes("{\"__metadata__\":{\"k\":1}}", ""), "not a string");
}

// Hostile headers found in review: a value nested two million deep (describing it must not
// recurse), a dimension of 2^63 (must not turn negative), and a name with a newline (the
// message stays on one line).
TEST(Safetensors, HostileHeadersGiveOneLineErrors) {
  const std::string deep = std::string(2000000, '[') + std::string(2000000, ']');
  expect_defect(
      file_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":" + deep + ",\"data_offsets\":[0,8]}}", kEightBytes),
      "bad shape");
  expect_defect(file_bytes("{" + f32_entry("a", "[0,9223372036854775808]", 0, 0) + "}", ""), "bad shape");
  TempDir dir;
  write_text(dir / "f.safetensors",
             file_bytes("{" + f32_entry("a\\nsecond line", "[3]", 0, 8) + "}", kEightBytes));
  try {
    read_safetensors(dir / "f.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

// Eight dimensions of 256 in a file of 256 data bytes: each dimension fits, but the element
// count is 2⁶⁴, which wraps to 0 and would match the tensor's 0 bytes. It must be refused as
// more elements than the file holds, before any shape reaches Tensor::empty.
TEST(Safetensors, AnElementCountThatWouldWrapIsRefused) {
  const std::string dims = "[256,256,256,256,256,256,256,256]";
  const std::string header = "{" + f32_entry("a", dims, 0, 0) +
                             ",\"b\":{\"dtype\":\"U8\",\"shape\":[256],\"data_offsets\":[0,256]}}";
  expect_defect(file_bytes(header, std::string(256, 'x')), "more elements than the file holds");
}

// A file larger than the limit is refused before it is read.
TEST(Safetensors, AFileOverTheSizeLimitIsRefused) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"t", Tensor::zeros({16})}}, {}, false);
  SafetensorsLimits limits;
  limits.max_file_bytes = 64;
  try {
    read_safetensors(dir / "m.safetensors", limits);
    ADD_FAILURE() << "no error for a file over the limit";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
  limits.max_file_bytes = 1 << 20;
  EXPECT_EQ(read_safetensors(dir / "m.safetensors", limits).tensors.size(), 1u);
}

// An empty tensor shares its offset with the next tensor ([0, 0) and [0, 8)); the header lists
// the non-empty one first (names sort "a" < "b"), and the coverage check must still order the
// empty one first rather than call the pair an overlap.
TEST(Safetensors, AnEmptyTensorAtAnotherTensorsOffsetRoundTrips) {
  TempDir dir;
  const Tensor a = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  write_safetensors(dir / "e.safetensors", {{"b_empty", Tensor::empty({0}, DType::f32)}, {"a", a}}, {},
                    false);
  const SafetensorsFile file = read_safetensors(dir / "e.safetensors");
  ASSERT_EQ(file.tensors.size(), 2u);
  ASSERT_NE(find(file, "a"), nullptr);
  EXPECT_EQ(find(file, "a")->to_vector<float>(), (std::vector<float>{1, 2}));
  ASSERT_NE(find(file, "b_empty"), nullptr);
  EXPECT_EQ(find(file, "b_empty")->numel(), 0);
}

// A directory or a missing path is a DataError too, not a crash or an empty result.
TEST(Safetensors, RefusesADirectoryAndAMissingFile) {
  TempDir dir;
  fs::create_directory(dir / "sub");
  EXPECT_THROW(read_safetensors(dir / "sub"), DataError);
  try {
    read_safetensors(dir / "missing.safetensors");
    FAIL() << "a missing file must throw";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.safetensors"), std::string::npos) << e.what();
  }
}

// ---- Writing ---------------------------------------------------------------------------------------

std::vector<std::string> directory_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Without overwrite an existing file is an InputError and keeps its bytes; with it, the new file
// replaces the old by a rename (a new inode: a reader holding the old file still sees it whole),
// and no temporary file is left behind either way.
TEST(Safetensors, WriteRefusesToClobberAndReplacesAtomically) {
  TempDir dir;
  const fs::path path = dir / "ckpt.safetensors";
  write_text(path, "precious");
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  EXPECT_THROW(write_safetensors(path, {{"t", t}}, {}, false), InputError);
  EXPECT_EQ(read_text(path), "precious");
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{"ckpt.safetensors"});

  struct stat before {};
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  write_safetensors(path, {{"t", t}}, {}, true);
  struct stat after {};
  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino) << "replaced in place, not by rename";
  const SafetensorsFile file = read_safetensors(path);
  ASSERT_EQ(file.tensors.size(), 1u);
  EXPECT_EQ(file.tensors[0].tensor.to_vector<float>(), (std::vector<float>{1, 2}));
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{"ckpt.safetensors"});
}

// A file the reader would refuse is never written: a tensor name given twice, or one named
// "__metadata__", is the caller's bug, thrown before the file is touched.
TEST(Safetensors, WriteRefusesNamesTheReaderWouldRefuse) {
  TempDir dir;
  const Tensor t = Tensor::from_vector(std::vector<float>{1}, {1});
  EXPECT_THROW(write_safetensors(dir / "a.safetensors", {{"t", t}, {"t", t}}, {}, false), Error);
  EXPECT_THROW(write_safetensors(dir / "a.safetensors", {{"__metadata__", t}}, {{"k", "v"}}, false), Error);
  EXPECT_TRUE(directory_entries(dir.path()).empty());
}

// A name as long as a file name may be (255 bytes) is written: the temporary file beside it
// takes a shortened form of the name, not one past the limit.
TEST(Safetensors, AFileNameOfTheLongestLegalLengthIsWritten) {
  TempDir dir;
  const fs::path path = dir / std::string(255, 'n');
  write_safetensors(path, {{"t", Tensor::from_vector(std::vector<float>{1}, {1})}}, {}, false);
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{std::string(255, 'n')});
}

// A failed write throws and leaves nothing behind (no stray temporary file).
TEST(Safetensors, WriteIntoAMissingDirectoryFailsCleanly) {
  TempDir dir;
  const Tensor t = Tensor::from_vector(std::vector<float>{1}, {1});
  EXPECT_THROW(write_safetensors(dir / "no" / "such.safetensors", {{"t", t}}, {}, false), InputError);
  EXPECT_TRUE(directory_entries(dir.path()).empty());
}

// A symbolic link is written through: the link stays and its target is replaced, or created
// when the link dangles (a relative target is relative to the link's folder). What is not a
// regular file is refused, and check_file_can_be_written refuses the same things up front,
// leaving nothing behind.
TEST(Safetensors, WritesThroughSymbolicLinksAndRefusesWhatIsNotAFile) {
  namespace fs = std::filesystem;
  TempDir dir;
  write_text(dir / "target.json", "old");
  fs::create_symlink(dir / "target.json", dir / "link.json");
  write_file_atomically(dir / "link.json", "new");
  EXPECT_TRUE(fs::is_symlink(dir / "link.json"));
  EXPECT_EQ(read_text(dir / "target.json"), "new");

  fs::create_directory(dir / "sub");
  fs::create_symlink("made.json", dir / "sub" / "dangling.json");
  check_file_can_be_written(dir / "sub" / "dangling.json");
  EXPECT_FALSE(fs::exists(dir / "sub" / "made.json"));
  write_file_atomically(dir / "sub" / "dangling.json", "made");
  EXPECT_TRUE(fs::is_symlink(dir / "sub" / "dangling.json"));
  EXPECT_EQ(read_text(dir / "sub" / "made.json"), "made");

  fs::create_symlink("loop.json", dir / "loop.json");
  EXPECT_THROW(check_file_can_be_written(dir / "loop.json"), InputError);

  ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0600), 0);
  for (const fs::path& not_a_file : {dir / "fifo", dir / "sub"}) {
    EXPECT_THROW(check_file_can_be_written(not_a_file), InputError) << not_a_file;
    EXPECT_THROW(write_file_atomically(not_a_file, "x"), InputError) << not_a_file;
  }
  // A device too (only probed: were the check broken, a write as root would replace /dev/null).
  EXPECT_THROW(check_file_can_be_written("/dev/null"), InputError);
  EXPECT_THROW(check_file_can_be_written(dir / std::string(300, 'x')), InputError);
  check_file_can_be_written(dir / "fresh.json");
  EXPECT_EQ(directory_entries(dir.path()).size(), 5u);  // target, link, sub, loop, fifo: no probes left
}

// A replaced file keeps its permission bits (a resumed sweep rewrites its rows in place of the
// user's file); a new one is 0644.
TEST(Safetensors, AReplacedFileKeepsItsPermissions) {
  namespace fs = std::filesystem;
  TempDir dir;
  write_file_atomically(dir / "rows.jsonl", "one\n");
  EXPECT_EQ(fs::status(dir / "rows.jsonl").permissions(), fs::perms(0644));
  fs::permissions(dir / "rows.jsonl", fs::perms(0600));
  write_file_atomically(dir / "rows.jsonl", "one\ntwo\n");
  EXPECT_EQ(fs::status(dir / "rows.jsonl").permissions(), fs::perms(0600));
  EXPECT_EQ(read_text(dir / "rows.jsonl"), "one\ntwo\n");
}

// A signal that ends the program mid-write (here SIGXFSZ: the child's file-size limit stops the
// write halfway, deterministically) leaves no temporary file when its handler calls
// remove_unfinished_file(), as the app's handlers of SIGINT, SIGTERM and SIGHUP do.
TEST(Safetensors, AKillMidWriteLeavesNoTemporaryFile) {
  TempDir dir;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::signal(SIGXFSZ, [](int) {
      remove_unfinished_file();
      _exit(7);
    });
    const rlimit limit{1 << 16, 1 << 16};  // 64 KiB
    setrlimit(RLIMIT_FSIZE, &limit);
    try {
      write_file_atomically(dir / "big.bin", std::string(1 << 20, 'x'));  // 1 MiB
    } catch (...) {
    }
    _exit(0);  // not reached: the limit raised SIGXFSZ
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7) << "status " << status;
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{});
}

// A write that fails partway (here the child's file-size limit, with SIGXFSZ ignored so that
// write() returns EFBIG, as on a full disk) is an InputError and removes its temporary file.
TEST(Safetensors, AFailedWriteRemovesItsTemporaryFile) {
  TempDir dir;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1 << 16, 1 << 16};  // 64 KiB
    setrlimit(RLIMIT_FSIZE, &limit);
    try {
      write_file_atomically(dir / "big.bin", std::string(1 << 20, 'x'));  // 1 MiB
    } catch (const InputError&) {
      _exit(0);
    }
    _exit(1);  // the write did not fail
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{});
}

// Replacing a file needs only its directory's permission, so a file made read-only would be
// replaced unasked: the writer and the up-front check refuse it (as root too, whom access() lets
// write anything), and leave it as it was.
TEST(Safetensors, AReadOnlyFileIsNotReplaced) {
  TempDir dir;
  const fs::path kept = dir / "kept.json";
  write_text(kept, "keep me");
  fs::permissions(kept, fs::perms(0444));
  for (const bool up_front : {true, false}) {
    try {
      if (up_front)
        check_file_can_be_written(kept);
      else
        write_file_atomically(kept, "replaced");
      ADD_FAILURE() << (up_front ? "the check" : "the write") << " accepted a read-only file";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), kept.string() +
                                           ": is read-only for this user; refusing to replace it "
                                           "(make it writable, or choose another name)");
    }
  }
  EXPECT_EQ(read_text(kept), "keep me");
  EXPECT_EQ(directory_entries(dir.path()), std::vector<std::string>{"kept.json"});
  fs::permissions(kept, fs::perms(0644));  // writable again: replaced
  write_file_atomically(kept, "replaced");
  EXPECT_EQ(read_text(kept), "replaced");
}

// In a sticky directory (like /tmp) only a file's owner (or the directory's, or root) may rename
// over it, so another user's file there is refused up front, not after the run. Made as root and
// probed as user 65534 in a child process; skipped when the test cannot become another user.
TEST(Safetensors, AnotherUsersFileInAStickyDirectoryIsRefusedUpFront) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to make a file another user cannot replace";
  TempDir dir;
  const fs::path sticky = dir / "sticky";
  fs::create_directory(sticky);
  fs::permissions(dir.path(), fs::perms(0755));
  fs::permissions(sticky, fs::perms(01777));
  write_text(sticky / "theirs.json", "theirs");
  fs::permissions(sticky / "theirs.json", fs::perms(0666));
  const int status = subliminal::test::exit_status_as_nobody(sticky, W_OK | X_OK, [&] {
    int refused = 0, accepted = 0;
    try {
      check_file_can_be_written(sticky / "theirs.json");
    } catch (const InputError&) {
      refused = 1;
    }
    try {
      check_file_can_be_written(sticky / "mine.json");  // a new file there is fine
      accepted = 1;
    } catch (const InputError&) {
    }
    return refused && accepted ? 0 : 1;
  });
  if (status == -1) GTEST_SKIP() << "user 65534 cannot be made here or cannot reach " << sticky;
  EXPECT_EQ(status, 0) << "1: the other user's file was not refused, or a new file was";
  EXPECT_EQ(read_text(sticky / "theirs.json"), "theirs");
}

}  // namespace
