// tests/test_tensor.cpp — views into a tensor's storage: in range they share it, out of range
// (including offsets so large that offset + count would overflow) they are ShapeErrors; and the
// other checks that keep a copy or a reshape from running past a buffer; and the CPU allocator's
// ceiling on the memory it takes.
#include <gtest/gtest.h>
#include <sys/resource.h>  // getrlimit, setrlimit: an address-space limit for a moment

#include <cstdint>  // INT64_MAX
#include <fstream>  // std::ifstream: /proc/meminfo
#include <string>   // std::string
#include <vector>   // std::vector

#include "engine/storage.h"  // set_cpu_memory_limit, cpu_allocator_stats, host_memory_available
#include "engine/tensor.h"
#include "tests/test_util.h"  // kSanitizer

namespace {

using namespace subliminal;

TEST(TensorViews, RowsAndViewOfShareTheStorage) {
  const Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {4, 3});  // [4,3]
  EXPECT_EQ(t.rows(1, 2).to_vector<float>(), (std::vector<float>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(t.rows(4, 0).numel(), 0);  // an empty view at the end is in range
  EXPECT_EQ(Tensor::view_of(t, 10, {2}).to_vector<float>(), (std::vector<float>{10, 11}));
  EXPECT_EQ(Tensor::view_of(t, 12, {0}).numel(), 0);
}

TEST(TensorViews, OutOfRangeViewsAreShapeErrorsEvenWhereTheSumWouldOverflow) {
  const Tensor t = Tensor::zeros({4, 3});  // [4,3]
  EXPECT_THROW(t.rows(3, 2), ShapeError);
  EXPECT_THROW(t.rows(5, 0), ShapeError);
  EXPECT_THROW(t.rows(-1, 1), ShapeError);
  EXPECT_THROW(t.rows(1, -1), ShapeError);
  EXPECT_THROW(t.rows(INT64_MAX, 1), ShapeError);  // begin + count overflows
  EXPECT_THROW(t.rows(1, INT64_MAX), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, 11, {2}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, 13, {0}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, -1, {1}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, INT64_MAX, {1}), ShapeError);  // offset + count overflows
  EXPECT_THROW(Tensor::view_of(t, 1, {INT64_MAX}), ShapeError);
}

// full() writes its value in every dtype (int32 labels and uint8 pixels too, not only floats).
TEST(TensorChecks, FullFillsEveryDtype) {
  EXPECT_EQ(Tensor::full({3}, 7.0, DType::i32).to_vector<int32_t>(), (std::vector<int32_t>{7, 7, 7}));
  EXPECT_EQ(Tensor::full({2}, 200.0, DType::u8).to_vector<uint8_t>(), (std::vector<uint8_t>{200, 200}));
  EXPECT_EQ(Tensor::full({2}, -3.0, DType::i64).to_vector<int64_t>(), (std::vector<int64_t>{-3, -3}));
  EXPECT_EQ(Tensor::full({2}, 0.25, DType::f32).to_vector<float>(), (std::vector<float>{0.25f, 0.25f}));
  EXPECT_EQ(Tensor::full({2}, 0.1, DType::f64).to_vector<double>(), (std::vector<double>{0.1, 0.1}));
}

// Shapes, reshapes and copies that do not match are ShapeErrors, not reads or writes past a
// buffer: a negative dimension, a reshape to another element count (fewer too), from_vector
// with too many or too few values, copy_from between shapes with one element count, and a
// dimension index one past the rank.
TEST(TensorChecks, MismatchedShapesAreShapeErrors) {
  EXPECT_THROW(Tensor::zeros({2, -1}), ShapeError);
  // 2⁶² float64 elements fit an int64 count but not a byte count: refused, not wrapped to 0.
  EXPECT_THROW(Tensor::empty({int64_t(1) << 62}, DType::f64), ShapeError);
  EXPECT_THROW(shape_numel({-1, -1}), ShapeError);
  const Tensor t = Tensor::zeros({2, 3});
  EXPECT_THROW(t.reshaped({5}), ShapeError);
  EXPECT_THROW(t.reshaped({7}), ShapeError);
  EXPECT_EQ(t.reshaped({3, 2}).shape(), (Shape{3, 2}));
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2}), ShapeError);
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1}, {2}), ShapeError);
  EXPECT_THROW(t.copy_from(Tensor::zeros({3, 2})), ShapeError);
  EXPECT_THROW(t.copy_from(Tensor::zeros({2, 3}, DType::f64)), ShapeError);
  EXPECT_EQ(t.dim(-1), 3);
  EXPECT_EQ(t.dim(-2), 2);
  EXPECT_THROW(t.dim(2), ShapeError);
  EXPECT_THROW(t.dim(-3), ShapeError);
}

// An allocation that would take the CPU allocator past its ceiling first returns the cache to the
// system, and is refused (OutOfMemoryError, nothing taken) only if it still would pass it.
TEST(CpuAllocator, ACeilingRefusesWhatWouldPassItOnlyAfterReturningTheCache) {
  struct NoCeilingAfter {
    ~NoCeilingAfter() { set_cpu_memory_limit(0); }
  } no_ceiling_after;
  constexpr uint64_t kMiB = 1 << 20;
  cpu_cache_trim();
  const uint64_t held = cpu_allocator_stats().bytes_held;  // what this process's tensors hold now
  set_cpu_memory_limit(held + 4 * kMiB);
  { const Tensor three = Tensor::empty({3 * kMiB / 4}); }  // 3 MiB of floats, freed into the cache
  EXPECT_EQ(cpu_allocator_stats().bytes_cached, 3 * kMiB);
  const Tensor two = Tensor::empty({2 * kMiB / 4});  // 3 cached + 2 > 4: the cache goes back first
  EXPECT_EQ(cpu_allocator_stats().bytes_cached, 0u);
  EXPECT_EQ(cpu_allocator_stats().bytes_held, held + 2 * kMiB);
  try {
    const Tensor three = Tensor::empty({3 * kMiB / 4});  // 2 + 3 > 4, with nothing cached to give back
    ADD_FAILURE() << "an allocation past the ceiling was made";
  } catch (const OutOfMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("out of host memory: allocating 3145728 bytes would take"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(cpu_allocator_stats().bytes_held, held + 2 * kMiB);  // the refused one took nothing
  const Tensor one = Tensor::empty({kMiB / 4});                  // 2 + 1 ≤ 4 still fits
  EXPECT_EQ(cpu_allocator_stats().bytes_held, held + 3 * kMiB);
}

// A size within a few bytes of SIZE_MAX cannot wrap to a tiny block when it is rounded up to
// the allocator's alignment: it is refused as out of memory.
TEST(CpuAllocator, ASizeThatWouldWrapWhenRoundedIsRefused) {
  EXPECT_THROW(Tensor::empty({(int64_t(1) << 61) - 1}, DType::f64), OutOfMemoryError);
}

// The memory available is the machine's (MemAvailable), or less where a cgroup allows less: never
// nothing and never more than the machine has.
TEST(CpuAllocator, HostMemoryAvailableIsAtMostTheMachines) {
  std::ifstream meminfo("/proc/meminfo");
  if (!meminfo) GTEST_SKIP() << "no /proc/meminfo here";
  std::string key;
  uint64_t total_kib = 0;
  while (meminfo >> key && key != "MemTotal:") meminfo.ignore(1 << 10, '\n');
  ASSERT_TRUE(meminfo >> total_kib) << "no MemTotal in /proc/meminfo";
  const uint64_t available = host_memory_available();
  EXPECT_GT(available, 0u);
  EXPECT_LE(available, total_kib * 1024);
}

// Under an address-space limit (`ulimit -v`), what is left of it: the limit less what the process
// has mapped, and the memory available is no more than that. Set here for a moment, 1 GiB above
// what is mapped now, as a soft limit the test can lift again.
TEST(CpuAllocator, AddressSpaceLeftIsTheLimitLessWhatIsMapped) {
  if (subliminal::test::kSanitizer) GTEST_SKIP() << "a sanitizer maps terabytes: no ulimit -v";
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_AS, &before), 0);
  if (before.rlim_cur != RLIM_INFINITY || before.rlim_max != RLIM_INFINITY)
    GTEST_SKIP() << "this process already runs under an address-space limit";
  rlimit data{};
  ASSERT_EQ(getrlimit(RLIMIT_DATA, &data), 0);
  if (data.rlim_cur != RLIM_INFINITY)
    GTEST_SKIP() << "this process already runs under a data limit (ulimit -d)";
  EXPECT_EQ(address_space_left(), kNoAddressSpaceLimit);
  std::ifstream status("/proc/self/status");
  if (!status) GTEST_SKIP() << "no /proc/self/status here";
  std::string key;
  uint64_t mapped_kib = 0;
  while (status >> key && key != "VmSize:") status.ignore(1 << 10, '\n');
  ASSERT_TRUE(status >> mapped_kib) << "no VmSize in /proc/self/status";
  constexpr uint64_t kGiB = uint64_t(1) << 30;
  rlimit limited = before;
  limited.rlim_cur = mapped_kib * 1024 + kGiB;
  ASSERT_EQ(setrlimit(RLIMIT_AS, &limited), 0);
  const uint64_t left = address_space_left(), available = host_memory_available();
  ASSERT_EQ(setrlimit(RLIMIT_AS, &before), 0);
  EXPECT_LE(left, kGiB);
  EXPECT_GT(left, kGiB - (uint64_t(16) << 20));  // the reading itself maps a page or two
  EXPECT_LE(available, left);
  EXPECT_GT(available, 0u);
}

}  // namespace
