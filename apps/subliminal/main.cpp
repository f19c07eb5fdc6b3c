// apps/subliminal/main.cpp — the command-line program: flags → data → experiment → report.
//
// The only place that prints errors and picks exit codes:
//   0 success · 1 internal or device fault · 2 bad input (flag, file, environment) or out of memory ·
//   3 a NaN/Inf stopped training
#include <fcntl.h>    // fcntl, open: the standard descriptors
#include <pthread.h>  // pthread_getattr_default_np: the stack a new thread maps
#include <unistd.h>

#include <algorithm>  // std::all_of
#include <atomic>     // end_on_signal runs once
#include <cctype>     // std::isalnum
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>  // exception_ptr: the report and the checkpoint each written
#include <filesystem>
#include <functional>
#include <new>  // std::bad_alloc

#include "apps/subliminal/build_info.h"
#include "apps/subliminal/checkpoint.h"
#include "apps/subliminal/config.h"
#include "apps/subliminal/experiment.h"
#include "apps/subliminal/interrupt.h"
#include "apps/subliminal/openblas_env.h"
#include "apps/subliminal/parity.h"
#include "apps/subliminal/report.h"
#include "apps/subliminal/sweep.h"
#include "data/mnist.h"
#include "engine/parallel.h"
#include "engine/safetensors.h"
#include "engine/storage.h"    // set_cpu_memory_limit, host_memory_available, address_space_left
#include "ops/cpu/gemm_cpu.h"  // blas_work_buffer_bytes

namespace subliminal::app {
namespace {

Device resolve_device(const std::string& choice) {
  if (choice == "cpu") return Device::cpu;
  std::string why;
  const bool gpu = cuda_available(&why);
  if (choice == "cuda") {
    if (!gpu) throw NoGpuError("--device cuda: no usable CUDA GPU (" + why + ")");
    return Device::cuda;
  }
  if (!gpu)
    std::fprintf(stderr, "subliminal: note: no usable CUDA GPU (%s); running on the CPU\n", why.c_str());
  return gpu ? Device::cuda : Device::cpu;
}

// Output problems are found before minutes of training, not after: whatever the final write
// would refuse (engine/safetensors.h, check_file_can_be_written) is refused now.
void check_output_path(const char* flag, const std::string& path, bool must_not_exist) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string name = std::string(flag) + " " + path_text(path);
  if (!fs::is_directory(dir, ec))
    throw InputError(name + ": directory " + path_text(dir.string()) + " does not exist");
  if (access(dir.c_str(), W_OK) != 0)
    throw InputError(name + ": directory " + path_text(dir.string()) + " is not writable");
  if (fs::is_directory(p, ec)) throw InputError(name + ": is a directory");
  if (must_not_exist && fs::exists(p, ec))  // through links, as the writer looks
    throw InputError(name + ": already exists (use --force to overwrite it)");
  try {
    check_file_can_be_written(p);
  } catch (const InputError& e) {
    throw InputError(std::string(flag) + " " + e.what());
  }
}

// Flags that choose how the GPU computes change nothing on the CPU: said once, so that a run
// that fell back to the CPU (--device auto) is not taken for one that used them.
void note_gpu_only_flags(const Config& config, Device device) {
  if (device != Device::cpu) return;
  const Config defaults;
  std::string given;
  auto add = [&given](bool set, const char* flag) {
    if (set) given += std::string(given.empty() ? "" : ", ") + flag;
  };
  add(config.tf32, "--tf32");
  add(config.autotune, "--autotune");
  add(!config.graphs, "--no-graphs");
  add(config.gemm_engine != defaults.gemm_engine, "--gemm");
  add(config.step != defaults.step, "--step");
  add(config.fused_split() != defaults.fused_split(), "--fused-split");
  if (!given.empty())
    std::fprintf(stderr,
                 "subliminal: note: this run is on the CPU, where flags that choose how the GPU computes "
                 "change nothing: %s\n",
                 given.c_str());
}

// What can be checked from the flags alone, before the device, MNIST or a run costs anything:
// every output can be written, and every configuration of a sweep is valid.
void check_before_running(const Config& config) {
  check_output_path("--json", config.json_path, false);
  check_output_path("--save", config.save_path, !config.force);
  check_output_path("--save-init", config.save_init_path, !config.force);
  check_output_path("--parity-batch", config.parity_batch_path, !config.force);
  if (!config.sweeps.empty()) {
    if (config.sweep_out.empty())
      throw UsageError("--sweep needs --sweep-out PREFIX for its CSV and JSONL rows");
    check_output_path("--sweep-out", config.sweep_out + ".csv", false);
    check_output_path("--sweep-out", config.sweep_out + ".jsonl", false);
    check_sweep_lock(config.sweep_out);  // someone's own PREFIX.lock is not taken over, nor removed
    sweep_configs(config);               // a bad --sweep is found before the device and MNIST are set up
  }
}

// The stack each new thread maps: glibc's default, `ulimit -s` (8 MiB on most machines).
uint64_t thread_stack_bytes() {
  size_t bytes = 0;
  pthread_attr_t defaults;
  if (pthread_getattr_default_np(&defaults) == 0) {
    pthread_attr_getstacksize(&defaults, &bytes);
    pthread_attr_destroy(&defaults);
  }
  return bytes > 0 ? bytes : uint64_t(8) << 20;
}

// What a CPU run on `threads` threads maps beside its tensors: OpenBLAS's work buffers (a buffer
// a thread, mapped during the first products: should a mapping fail, OpenBLAS retries it
// forever, ops/cpu/gemm_cpu.h), each of the pool's threads' stack and malloc arena (64 MiB
// reserved), and kOutside: MNIST's bytes as read (55 MB, kept beside the tensors made from them)
// and the program's own small allocations.
uint64_t address_space_beside_tensors(int threads) {
  constexpr uint64_t kMiB = uint64_t(1) << 20, kArena = 64 * kMiB, kOutside = 128 * kMiB;
  return cpu::blas_work_buffer_bytes(threads) + uint64_t(threads - 1) * (thread_stack_bytes() + kArena) +
         kOutside;
}

// The CPU allocator's ceiling: the memory available (engine/storage.h) and, under an
// address-space limit, what is left of it once the rest of the run's mappings are set aside.
// Tensors past the ceiling are refused with an error, instead of leaving OpenBLAS no room.
uint64_t cpu_memory_ceiling(Device device, int cpu_threads) {
  const uint64_t available = host_memory_available(), room = address_space_left();
  if (device != Device::cpu || room == kNoAddressSpaceLimit) return available;
  const uint64_t set_aside = address_space_beside_tensors(cpu_threads);
  if (room <= set_aside) {
    int fit = cpu_threads - 1;  // the most threads whose set-aside leaves something for tensors
    while (fit >= 1 && address_space_beside_tensors(fit) >= room) --fit;
    throw InputError("the address-space limit (ulimit -v or -d) leaves this process " + bytes_text(room) +
                     ", and a run on " + std::to_string(cpu_threads) + " thread" +
                     (cpu_threads > 1 ? "s" : "") + " needs " + bytes_text(set_aside) +
                     " of it beside the data (OpenBLAS's work buffers, 128 MiB a thread; the threads' "
                     "stacks): raise the limit" +
                     (fit >= 1 ? ", or run with --threads " + std::to_string(fit) + " or fewer" : ""));
  }
  return std::min(available, room - set_aside);
}

// What a signal's message says a single run leaves unwritten (interrupt.h): " before the run
// ended: --json r.json and --save m.st were not written" (either may be "": not asked for, or
// already written).
std::string run_interrupted(const std::string& json_path, const std::string& save_path) {
  std::vector<std::string> named;
  if (!json_path.empty()) named.push_back("--json " + path_text(json_path));
  if (!save_path.empty()) named.push_back("--save " + path_text(save_path));
  std::string text = " before the run ended";
  if (named.empty()) return text;
  return text + ": " + named.front() + (named.size() > 1 ? " and " + named.back() + " were" : " was") +
         " not written";
}

// A bad --load-init file is found before anything runs. The file gives the weights only: a run
// meant to repeat the one that saved them needs its seed too, which a reader of the file would
// not guess, so a differing seed is said; and the cross-init control, drawn by the run itself
// (unless the paper's pairing takes another model's init from the file), with --init's scheme,
// so a file of another scheme is said too.
// A value from the file's metadata as a flag's value in a note: as it is when it reads as one
// (letters, digits, '.', '-', '_'; at most 40), else quoted() — a newline or an escape sequence
// written into a file must not reach the terminal.
std::string metadata_text(const std::string& value) {
  const bool plain = value.size() <= 40 && std::all_of(value.begin(), value.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
                     });
  return plain ? value : quoted(value, 40);
}

void check_init_file(const Config& config) {
  if (config.load_init_path.empty()) return;
  // --parity-batch computes one model's batch, whatever --models or a preset says.
  const bool parity = !config.parity_batch_path.empty();
  MlpParams probe(config.mlp_shape(), parity ? 1 : config.models, DType::f32, Device::cpu);
  InitFileNotes file;
  load_init(config.load_init_path, probe, parity, &file);
  if (parity) return;
  const bool draws_its_control = config.draws_its_own_control();
  if (!file.seed.empty() && file.seed != std::to_string(config.seed))
    std::fprintf(
        stderr,
        "subliminal: note: %s was saved by a run with --seed %s; this run's %s follow --seed %llu, so "
        "it does not repeat that run (give --seed %s to)\n",
        path_text(config.load_init_path).c_str(), metadata_text(file.seed).c_str(),
        draws_its_control ? "batches, noise and cross-init student" : "batches and noise",
        (unsigned long long)config.seed, metadata_text(file.seed).c_str());
  if (draws_its_control && !file.scheme.empty() && file.scheme != init_name(config.init))
    std::fprintf(stderr,
                 "subliminal: note: %s holds an --init %s init; this run draws its cross-init control with "
                 "--init %s (give --init %s for a control of the same kind)\n",
                 path_text(config.load_init_path).c_str(), metadata_text(file.scheme).c_str(),
                 init_name(config.init), metadata_text(file.scheme).c_str());
}

// The CPU threads, the host-memory ceiling and the floating-point mode the run works under.
void set_up_this_machine(const Config& config, Device device) {
  const int cpu_threads = config.threads > 0 ? config.threads : usable_cpu_cores();
  set_cpu_threads(cpu_threads);  // the GEMMs' slabs and the loops between them (engine/parallel.h)
  // Flags that ask for more host memory than there is end in an error naming the bytes, not in
  // the kernel's silent kill once overcommitted pages are touched (engine/storage.h).
  set_cpu_memory_limit(cpu_memory_ceiling(device, cpu_threads));
  if (config.sweeps.empty()) check_host_memory(config, device);  // a sweep's, per configuration
  flush_denormals_on_this_thread();
}

// The numbers first, the checkpoint last, and each written even if the other cannot be (a full
// disk, a file-size limit): a run of many models should not lose its report to its checkpoint's
// size. A failure is then the program's error; two are one line naming both.
// report_text: the --json report's text, made only when it is asked for (and inside the attempt,
// so that nothing it does can cost the checkpoint).
void write_report_then_checkpoint(const Config& config, const std::function<std::string()>& report_text,
                                  const TrainedModels& trained) {
  std::exception_ptr failed;
  std::string failures;
  bool only_bad_input = true;  // every failure the user's (a path, a full disk): exit 2, else 1
  const auto attempt = [&](const auto& write) {
    try {
      write();
      return true;
    } catch (const std::exception& e) {
      if (!failed) failed = std::current_exception();
      failures += (failures.empty() ? "" : "; ") + std::string(e.what());
      if (!dynamic_cast<const InputError*>(&e) && !dynamic_cast<const OutOfMemoryError*>(&e))
        only_bad_input = false;
      return false;
    }
  };
  bool report_written = true;
  if (!config.json_path.empty())
    report_written = attempt([&] { write_file_atomically(config.json_path, report_text()); });
  set_interrupt_note(run_interrupted(report_written ? "" : config.json_path, config.save_path));
  const bool saved = config.save_path.empty() || attempt([&] {
                       save_trained(config.save_path, trained.teacher, trained.ghost, trained.all,
                                    trained.arms, config.force);
                     });
  set_interrupt_note("");  // nothing is left to lose
  // Both failed: one line naming both, exiting as the graver of the two would alone (a device
  // fault beside a bad path is still a fault).
  if (!report_written && !saved) {
    if (only_bad_input) throw InputError(failures);
    throw Error(failures);
  }
  if (failed) std::rethrow_exception(failed);
}

int run(int argc, char** argv) {
  const auto started = std::chrono::steady_clock::now();
  const std::string started_utc = utc_now();
  CommandLine command_line = parse_command_line(argc, argv);
  if (command_line.help) {
    std::fputs(command_line.help_text.c_str(), stdout);
    return 0;
  }
  if (command_line.version) {
    std::fputs(build_info_text(build_info()).c_str(), stdout);
    return 0;
  }
  Config config = command_line.config;
  check_before_running(config);
  set_interrupt_note(" before the run started");
  if (config.sweeps.empty()) check_init_file(config);  // a sweep's, by sweep_configs
  const Device device = resolve_device(config.device);
  note_gpu_only_flags(config, device);
  set_up_this_machine(config, device);

  const std::filesystem::path dir = data::locate_mnist(config.data_dir);
  check_outputs_spare(config, data::mnist_files_in(dir));  // before anything is written
  const data::Mnist mnist = data::load_mnist(dir);
  if (config.train_samples > mnist.train.count)
    throw UsageError("--train-samples " + std::to_string(config.train_samples) + ": the training set in " +
                     path_text(dir.string()) + " has " + std::to_string(mnist.train.count) + " images");
  RunTimes times;
  times.load = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  if (!config.parity_batch_path.empty()) {
    set_interrupt_note(" before " + path_text(config.parity_batch_path) + " was written");
    write_parity_batch(config, mnist, device, config.parity_batch_path);
    set_interrupt_note("");
    std::printf("subliminal: wrote one batch's losses and gradients to %s\n",
                config.parity_batch_path.c_str());
    return 0;
  }
  if (!config.sweeps.empty()) {
    set_interrupt_note(" before the sweep started");  // run_sweep says more once its files are there
    return run_sweep(config, mnist, device, stdout);
  }
  set_interrupt_note(run_interrupted(config.json_path, config.save_path));

  std::printf("subliminal: MNIST from %s (%lld train, %lld test) on %s\n", dir.string().c_str(),
              (long long)mnist.train.count, (long long)mnist.test.count,
              where_it_runs(device_description(device)).c_str());
  ConsoleObserver observer(stdout, config.progress, config.divergence, config.noise == NoiseKind::mnist);
  TrainedModels trained;
  Results results =
      run_experiment(config, mnist, device, observer, config.save_path.empty() ? nullptr : &trained);
  times.total = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  print_summary(stdout, config, results, times);
  write_report_then_checkpoint(
      config,
      [&] {
        const RunSource source{
            dir.string(), data::mnist_fingerprint(mnist), {argv, argv + argc}, started_utc};
        return report_json(config, results, times, device, source);
      },
      trained);
  return 0;
}

// What an out-of-memory error suggests: smaller flags, or, under an address-space limit (the
// likelier cause: it counts what is mapped, not what is used), a larger one.
const char* what_to_reduce() {
  return address_space_left() == kNoAddressSpaceLimit ? "reduce --models, --hidden or --batch-size"
                                                      : "raise the address-space limit (ulimit -v or -d), or "
                                                        "reduce --models, --hidden or --batch-size";
}

// A signal that ends the program removes the temporary file of a write in progress first (the
// file it would have replaced is untouched either way), says in one line what it interrupted
// and what was not written (interrupt.h), then ends the program as the signal would have.
void end_on_signal(int signal_number) {
  // Once: a second signal (another kind, held back while this ran: install_signal_handlers)
  // only ends the program.
  static std::atomic<bool> ending{false};
  if (!ending.exchange(true)) {
    remove_unfinished_file();
    on_ending_signal(signal_number);  // says what was not written; a sweep's lock goes too
  }
  std::signal(signal_number, SIG_DFL);
  std::raise(signal_number);
}

void install_signal_handlers() {
  // A signal the parent set to be ignored stays ignored: `nohup` ignores SIGHUP, and a shell
  // ignores SIGINT for a job it starts in the background.
  // While the handler runs, the other two are held back, so its line is not cut by another's.
  struct sigaction ending {};
  ending.sa_handler = end_on_signal;
  ending.sa_flags = SA_RESTART;  // as std::signal set it
  sigemptyset(&ending.sa_mask);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&ending.sa_mask, signal_number);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction inherited {};
    if (sigaction(signal_number, nullptr, &inherited) == 0 && inherited.sa_handler != SIG_IGN)
      sigaction(signal_number, &ending, nullptr);
  }
  // A closed pipe or a file-size limit makes the write fail (EPIPE, EFBIG) instead of killing the
  // program unannounced: the run still writes its --json and --save, then main() says what failed.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGXFSZ, SIG_IGN);
}

// A standard descriptor the caller closed (`>&-`) would be taken by the next file the program
// opens: a sweep's lock would receive its console lines. Each closed one is held by /dev/null
// opened read-only, so that writes to it fail (EBADF) and are reported as any failed write is.
void hold_closed_standard_descriptors() {
  for (int fd = 0; fd <= 2; ++fd)  // in order: open() takes the lowest free descriptor, this one
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) open("/dev/null", O_RDONLY);
}

// Results that never reached their reader (a full disk, a closed pipe) are not a success. A
// write that failed at an earlier line's flush left no errno behind: one more byte says why.
void check_standard_output() {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return;
  int why = errno;
  if (why == 0 && ::write(STDOUT_FILENO, "\n", 1) < 0) why = errno;
  throw InputError(std::string("cannot write to standard output") +
                   (why ? std::string(" (") + std::strerror(why) + ")" : std::string()));
}

}  // namespace
}  // namespace subliminal::app

int main(int argc, char** argv) {
  using namespace subliminal;
  app::hold_closed_standard_descriptors();
  app::prepare_openblas(argv);
  app::install_signal_handlers();
  try {
    const int code = app::run(argc, argv);
    app::check_standard_output();
    return code;
  } catch (const InputError& e) {
    std::fprintf(stderr, "subliminal: error: %s\n", e.what());
    return 2;
  } catch (const OutOfMemoryError& e) {  // the flags asked for more than the machine has
    std::fprintf(stderr, "subliminal: error: %s (%s)\n", e.what(), app::what_to_reduce());
    return 2;
  } catch (const std::bad_alloc&) {  // an allocation outside the engine's allocator: MNIST's bytes
    std::fprintf(stderr, "subliminal: error: out of host memory (%s)\n", app::what_to_reduce());
    return 2;
  } catch (const app::NonFiniteError& e) {
    std::fprintf(stderr, "subliminal: stopped: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "subliminal: internal error: %s\n", e.what());
    return 1;
  }
}
