// engine/parallel.cpp — a pool of threads for parallel_for (engine/parallel.h).
//
// One job at a time. The caller publishes the job and bumps `generation_`; worker w (1 …
// T − 1) runs range w, the caller range 0, and the caller waits until every worker has
// counted `pending_` down.
// A worker between jobs first polls for a little while (the next loop usually comes within
// a GEMM's time), yielding the core to anyone who wants it, then sleeps on the atomic.
#include "engine/parallel.h"

#include <sched.h>  // sched_getaffinity, CPU_COUNT

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define SUBLIMINAL_HAS_MXCSR 1
#endif

namespace subliminal {
namespace {

// The floating-point control word a worker must run under to compute the caller's bits.
unsigned fp_control() {
#ifdef SUBLIMINAL_HAS_MXCSR
  return _mm_getcsr();
#else
  return 0;
#endif
}
void set_fp_control([[maybe_unused]] unsigned control) {
#ifdef SUBLIMINAL_HAS_MXCSR
  if (_mm_getcsr() != control) _mm_setcsr(control);
#endif
}

thread_local bool inside_parallel_for = false;

class Pool {
 public:
  explicit Pool(int threads) {
    try {
      for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { work(w); });
    } catch (...) {  // a thread could not be started: stop those that were, then report it
      stop();
      throw;
    }
  }
  ~Pool() { stop(); }
  int threads() const { return int(workers_.size()) + 1; }

  // Runs body over [0, n) in `parts` ranges (parts ≤ threads()), range 0 on the caller.
  // Every worker acknowledges every job, those without a range too, so no worker can still be
  // reading this job's fields when the next one writes them.
  void run(int64_t n, int parts, const void* body, detail::RangeBody call) {
    n_ = n;
    parts_ = parts;
    body_ = body;
    call_ = call;
    control_ = fp_control();
    error_ = nullptr;
    pending_.store(int(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);  // publishes the job's fields
    generation_.notify_all();
    std::exception_ptr caller_error;
    try {
      run_range(0);
    } catch (...) {
      caller_error = std::current_exception();
    }
    // The workers' ranges are as long as the caller's; poll until they are done.
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    if (caller_error) std::rethrow_exception(caller_error);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void stop() {
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

  void run_range(int part) const {
    const int64_t begin = n_ * part / parts_, end = n_ * (part + 1) / parts_;
    if (begin < end) call_(body_, begin, end);
  }

  void work(int w) {
    inside_parallel_for = true;  // a worker's loop never starts another job
    uint64_t seen = 0;
    for (;;) {
      uint64_t now = generation_.load(std::memory_order_acquire);
      const auto poll_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (now == seen && std::chrono::steady_clock::now() < poll_until) {
        std::this_thread::yield();
        now = generation_.load(std::memory_order_acquire);
      }
      if (now == seen) {
        generation_.wait(seen, std::memory_order_acquire);
        continue;
      }
      seen = now;
      if (stop_) return;
      if (w < parts_) {
        set_fp_control(control_);
        try {
          run_range(w);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  // The job: written by the caller before it bumps generation_, read by the workers after.
  int64_t n_ = 0;
  int parts_ = 1;
  const void* body_ = nullptr;
  detail::RangeBody call_ = nullptr;
  unsigned control_ = 0;
  bool stop_ = false;
  std::mutex error_mutex_;
  std::exception_ptr error_;  // a worker's exception, rethrown by the caller
};

std::mutex pool_mutex;  // one job at a time; also guards `pool`
std::unique_ptr<Pool> pool;
// 0: not set, use the hardware's. Atomic, so that cpu_threads() needs no lock: a GEMM asks it
// from inside a parallel_for body, whose caller holds pool_mutex for the whole job.
std::atomic<int> wanted_threads{0};

// The threads a job may use: the set number, else the usable cores.
int threads_now() {
  const int wanted = wanted_threads.load(std::memory_order_relaxed);
  return wanted > 0 ? wanted : usable_cpu_cores();
}

}  // namespace

int usable_cpu_cores() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0)
    return CPU_COUNT(&allowed);
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

void set_cpu_threads(int threads) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  wanted_threads.store(std::max(1, threads), std::memory_order_relaxed);
  if (pool && pool->threads() != threads_now()) pool.reset();  // the next job starts a new pool
}

int cpu_threads() { return threads_now(); }

namespace detail {

void run_parallel(int64_t n, int64_t grain, const void* body, RangeBody call) {
  if (n <= 0) return;
  std::unique_lock<std::mutex> lock(pool_mutex, std::defer_lock);
  const int64_t ranges = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  // (inside_parallel_for is tested before try_lock: the thread running a job holds the mutex.)
  if (ranges < 2 || inside_parallel_for || !lock.try_lock()) {
    call(body, 0, n);
    return;
  }
  const int threads = threads_now();
  if (threads < 2) {
    lock.unlock();
    call(body, 0, n);
    return;
  }
  if (!pool) {
    try {
      pool = std::make_unique<Pool>(threads);
    } catch (const std::system_error&) {  // no threads to be had: the caller runs the loop
      lock.unlock();
      call(body, 0, n);
      return;
    }
  }
  inside_parallel_for = true;
  struct Leave {
    ~Leave() { inside_parallel_for = false; }
  } leave;
  pool->run(n, int(std::min<int64_t>(ranges, threads)), body, call);
}

}  // namespace detail
}  // namespace subliminal
