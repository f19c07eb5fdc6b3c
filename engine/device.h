// engine/device.h — where a tensor lives: host memory or the (single) CUDA GPU.
#pragma once

#include <string>

namespace subliminal {

enum class Device { cpu, cuda };

inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// True when this build has the CUDA backend and a usable GPU answers at run time.
// Any error from the probe (no driver, no device, driver too old) counts as "no GPU";
// `why` then receives a one-line reason. The probe runs once; later calls return its result.
bool cuda_available(std::string* why = nullptr);

// True when the CUDA backend was compiled in (independent of whether a GPU exists).
bool cuda_compiled();

// Short human-readable description of a device: "cpu (2 hardware threads)", "NVIDIA H100 80GB HBM3".
std::string device_description(Device d);

// Blocks until all work queued on the device is done (no-op on the CPU).
void synchronize(Device d);

// True while the GPU's stream is being captured into a CUDA graph (false without CUDA).
bool device_capturing();

// Makes this thread's float arithmetic flush subnormal numbers to zero (x86 FTZ + DAZ).
// Late in training, Adam's second moments and some gradients fall below 1.2e-38; x86 cores
// take microcode assists on such values and the CPU run slowed by 40% over its last epochs.
// Values that small cannot move a parameter (they sit far below Adam's eps), so flushing
// them changes no result we report. Our CUDA kernels are built without -ftz and keep them, so
// the CPU and the GPU may differ there, far below eps. No-op on other CPUs.
void flush_denormals_on_this_thread();

}  // namespace subliminal
