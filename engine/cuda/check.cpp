// engine/cuda/check.cpp — the one place that formats a failed NVIDIA-library call.
#include "engine/cuda/check.h"

namespace subliminal::cuda_detail {

void throw_device_error(const char* library, const std::string& status, const char* call, const char* file,
                        int line, bool out_of_memory) {
  std::string message = std::string(library) + " call " + call + " failed: " + status + " at " + file + ":" +
                        std::to_string(line);
  if (out_of_memory) throw OutOfMemoryError(message);
  throw DeviceError(message);
}

}  // namespace subliminal::cuda_detail
