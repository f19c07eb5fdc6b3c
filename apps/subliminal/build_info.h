// apps/subliminal/build_info.h — which build made a run: the commit it was built from and what it
// was built with. `subliminal --version` prints it, and every JSON report and sweep row carries
// it, so that a result can be traced to the code that made it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace subliminal::app {

// `git describe --always --dirty --abbrev=12` of the source tree when it was built ("…-dirty.
// 1a2b3c4d": with changes to tracked files, the digits a digest of them; "unknown": not built
// from a git checkout). Written at every build by cmake/BuildCommit.cmake.
extern const char* const kBuildCommit;

struct BuildInfo {
  std::string commit;      // kBuildCommit
  std::string build_type;  // CMAKE_BUILD_TYPE: "Release", "Debug", …
  std::string compiler;    // "GCC 12.2.0", "Clang 14.0.6"
  std::string cuda;        // "CUDA 13.0, architectures 80,90", or "" (no CUDA backend)
  std::string cudnn;       // "cuDNN 9.19.0 (frontend 1.8.0)", or "" (no cuDNN engine)
  std::string openblas;    // OpenBLAS's own configuration line: version, build options, kernels
};
BuildInfo build_info();

// `subliminal --version`: a line per fact, the first "subliminal <commit>".
std::string build_info_text(const BuildInfo& info);
// The reports' "build": {commit, build_type, compiler, cuda, cudnn, openblas} ("" where absent).
nlohmann::json build_info_json(const BuildInfo& info);

}  // namespace subliminal::app
