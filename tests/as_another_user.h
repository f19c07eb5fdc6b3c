// tests/as_another_user.h — a check run as an unprivileged user, for the tests of what file
// permissions refuse: CI runs as root, which reads and replaces anything.
#pragma once

#include <sys/wait.h>  // waitpid, WIFEXITED, WEXITSTATUS
#include <unistd.h>    // fork, setresuid, access, _exit

#include <filesystem>  // std::filesystem::path
#include <functional>  // std::function

namespace subliminal::test {

// The exit status `body` chose, run in a child process as user 65534 ("nobody"): 0 for what the
// test expected, others that the caller names. -1 when that user cannot be made here or has not
// `access` (access(2)'s mode) to `folder` — $TMPDIR under a private directory, say: the caller
// skips. `body` runs in the forked child: it must catch what it throws, and report only through
// its result (a gtest assertion there is not seen).
inline int exit_status_as_nobody(const std::filesystem::path& folder, int access,
                                 const std::function<int()>& body) {
  const pid_t child = fork();
  if (child < 0) return -2;
  if (child == 0) {
    if (setresuid(65534, 65534, 65534) != 0 || ::access(folder.c_str(), access) != 0) _exit(9);
    _exit(body());
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -2;
  return WEXITSTATUS(status) == 9 ? -1 : WEXITSTATUS(status);
}

}  // namespace subliminal::test
