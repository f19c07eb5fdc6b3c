// tests/test_parallel.cpp — parallel_for (engine/parallel.h): every index once, in contiguous
// ranges; nested and concurrent calls; exceptions from any range; the workers computing
// under the caller's floating-point control word. (CI runs this suite under ThreadSanitizer
// too: scripts/sanitize.sh.)
#include <gtest/gtest.h>
#include <sched.h>  // sched_getaffinity, sched_setaffinity

#include <algorithm>  // std::sort
#include <atomic>     // std::atomic
#include <cstring>    // std::memcpy
#include <mutex>      // std::mutex
#include <stdexcept>  // std::runtime_error
#include <thread>     // std::thread
#include <utility>    // std::pair
#include <vector>     // std::vector

#include "engine/device.h"    // flush_denormals_on_this_thread
#include "engine/parallel.h"  // parallel_for, set_cpu_threads

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>  // _mm_getcsr, _mm_setcsr
#endif

namespace {

using namespace subliminal;

// Restores the pool's size (and this thread's control word) after a test changes them.
class Parallel : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = cpu_threads();
#if defined(__SSE__) || defined(__x86_64__)
    control_ = _mm_getcsr();
#endif
  }
  void TearDown() override {
    set_cpu_threads(threads_);
#if defined(__SSE__) || defined(__x86_64__)
    _mm_setcsr(control_);
#endif
  }
  int threads_ = 1;
  unsigned control_ = 0;
};

// The ranges one call hands out, sorted by where they begin.
std::vector<std::pair<int64_t, int64_t>> ranges_of(int64_t n, int64_t grain) {
  std::mutex mutex;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    std::lock_guard<std::mutex> lock(mutex);
    ranges.emplace_back(begin, end);
  });
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

// The default thread count follows the CPU affinity (taskset, a container's cpuset), not the
// machine's thread count: a thread confined to one core counts one usable core.
TEST(UsableCpuCores, FollowTheAffinity) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  EXPECT_EQ(usable_cpu_cores(), CPU_COUNT(&before));
  int first = 0;
  while (!CPU_ISSET(first, &before)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  const int confined = usable_cpu_cores();
  ASSERT_EQ(sched_setaffinity(0, sizeof before, &before), 0);
  EXPECT_EQ(confined, 1);
}

TEST_F(Parallel, CoversEveryIndexOnceInContiguousRanges) {
  for (int threads : {1, 2, 3, 5}) {
    set_cpu_threads(threads);
    EXPECT_EQ(cpu_threads(), threads);
    for (int64_t n : {0, 1, 7, 100, 1000, 100003}) {
      for (int64_t grain : {1, 10, 1000, 1 << 20}) {
        const auto ranges = ranges_of(n, grain);
        int64_t next = 0;
        for (const auto& [begin, end] : ranges) {
          EXPECT_EQ(begin, next) << "a gap or an overlap: n " << n << ", grain " << grain << ", " << threads
                                 << " threads";
          EXPECT_LT(begin, end);
          next = end;
        }
        EXPECT_EQ(next, n) << "n " << n << ", grain " << grain << ", " << threads << " threads";
        // At most one range per thread, and none shorter than the grain (the split is even).
        EXPECT_LE(int64_t(ranges.size()), threads);
        if (ranges.size() > 1) {
          for (const auto& [begin, end] : ranges) EXPECT_GE(end - begin, grain) << n << " " << grain;
        }
      }
    }
  }
}

// A loop worth fewer ranges than there are threads gets only that many: 2500 elements of
// grain 1000 are two ranges on 3 or 5 threads, not 3 or 5 shorter than the grain.
TEST_F(Parallel, NoMoreRangesThanTheGrainAllows) {
  for (int threads : {3, 5}) {
    set_cpu_threads(threads);
    const auto ranges = ranges_of(2500, 1000);
    ASSERT_EQ(ranges.size(), 2u) << threads << " threads";
    EXPECT_EQ(ranges[0], (std::pair<int64_t, int64_t>{0, 1250}));
    EXPECT_EQ(ranges[1], (std::pair<int64_t, int64_t>{1250, 2500}));
  }
}

TEST_F(Parallel, UsesTheOtherThreadsWhenTheLoopIsLongEnough) {
  set_cpu_threads(3);
  std::mutex mutex;
  std::vector<std::thread::id> ids;
  parallel_for(3000, 1000, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_NE(ids[1], ids[2]);
  EXPECT_NE(ids[0], ids[2]);
}

// Jobs back to back, some with fewer ranges than the pool has threads: a worker left without
// a range must not still be reading one job's fields when the next job writes them (under
// ThreadSanitizer this is where such a race shows), nor run a range twice.
TEST_F(Parallel, JobsBackToBackWithIdleWorkers) {
  set_cpu_threads(4);
  std::vector<std::atomic<int>> hits(4);
  for (int round = 0; round < 3000; ++round) {
    const int64_t n = 1 + round % 4;
    for (auto& h : hits) h.store(0);
    parallel_for(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[size_t(i)].fetch_add(1);
    });
    for (int64_t i = 0; i < 4; ++i) ASSERT_EQ(hits[size_t(i)].load(), i < n ? 1 : 0) << "round " << round;
  }
}

// A loop inside a range runs on its caller instead of waiting for the busy pool.
TEST_F(Parallel, NestedCallsRunOnTheirCaller) {
  set_cpu_threads(4);
  std::vector<std::atomic<int>> hits(400 * 50);
  parallel_for(400, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      parallel_for(50, 1, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) hits[size_t(i * 50 + j)].fetch_add(1);
      });
  });
  for (size_t k = 0; k < hits.size(); ++k) ASSERT_EQ(hits[k].load(), 1) << k;
}

// Two threads calling at once: one gets the pool, the other runs its loop itself.
TEST_F(Parallel, ConcurrentCallersEachCoverTheirLoop) {
  set_cpu_threads(3);
  constexpr int64_t n = 30000;
  std::vector<int> a(n), b(n);
  auto fill = [](std::vector<int>& v, int value) {
    for (int round = 0; round < 50; ++round)
      parallel_for(int64_t(v.size()), 1000, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) v[size_t(i)] += value;
      });
  };
  std::thread other([&] { fill(b, 2); });
  fill(a, 1);
  other.join();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(a[size_t(i)], 50) << i;
    ASSERT_EQ(b[size_t(i)], 100) << i;
  }
}

// An exception in any range reaches the caller after every range has finished, and the pool
// keeps working.
TEST_F(Parallel, ExceptionsFromAnyRangeReachTheCaller) {
  set_cpu_threads(3);
  for (int64_t throwing_begin : {int64_t(0), int64_t(2000)}) {  // the caller's range, a worker's
    std::atomic<int> finished{0};
    EXPECT_THROW(parallel_for(3000, 1000,
                              [&](int64_t begin, int64_t) {
                                if (begin == throwing_begin) throw std::runtime_error("range failed");
                                finished.fetch_add(1);
                              }),
                 std::runtime_error);
    EXPECT_EQ(finished.load(), 2) << "the other ranges ran to the end before the throw";
  }
  std::atomic<int64_t> sum{0};
  parallel_for(3000, 1000, [&](int64_t begin, int64_t end) { sum.fetch_add(end - begin); });
  EXPECT_EQ(sum.load(), 3000);
}

// The workers compute under the caller's control word: with flush-to-zero on, a product that
// would be subnormal is 0 in every range, as it is on the caller.
TEST_F(Parallel, WorkersFlushSubnormalsWhenTheCallerDoes) {
#if defined(__SSE__) || defined(__x86_64__)
  set_cpu_threads(3);
  volatile float tiny = 1e-38f, half = 0.5f;  // volatile: computed at run time, not folded
  std::vector<float> out(3000);
  auto run = [&] {
    parallel_for(3000, 1000, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[size_t(i)] = tiny * half;
    });
  };
  run();  // start the pool's workers before the caller changes its control word
  for (float v : out) ASSERT_GT(v, 0.0f) << "without flush-to-zero the product is subnormal";
  flush_denormals_on_this_thread();
  run();
  // Compared as bits: with denormals-are-zero on, this thread would read a subnormal as 0.
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &out[i], sizeof(bits));
    ASSERT_EQ(bits, 0u) << "index " << i << " was not flushed to zero";
  }
#else
  GTEST_SKIP() << "no x86 control word on this CPU";
#endif
}

}  // namespace
