// tests/temp_dir.h — a fresh directory under the system temp dir, removed with everything in
// it at scope exit. Shared by every suite that writes files.
#pragma once

#include <cstdlib>     // mkdtemp
#include <filesystem>  // std::filesystem
#include <stdexcept>   // std::runtime_error
#include <string>      // std::string

namespace subliminal::test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "subliminal_test_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace subliminal::test
