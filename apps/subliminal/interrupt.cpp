// apps/subliminal/interrupt.cpp — the handler's state, in fixed static storage (interrupt.h).
#include "apps/subliminal/interrupt.h"

#include <sys/stat.h>  // fstat, lstat: is the lock's name still the file we hold
#include <unistd.h>    // write, unlink

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>

namespace subliminal::app {
namespace {

// Two buffers: a new text is copied into the one the handler is not told to read, then published
// by a release store of its index, which the handler loads with acquire. So a signal that lands
// while the text changes still finds a whole one, the old. (The handler may run on any thread
// that does not block the signal, usually the main one, the one that changes the text.)
struct Text {
  char bytes[2][1024];
  std::atomic<int> current{-1};  // -1: no text
  void assign(const std::string& text) {
    const int next = current.load(std::memory_order_relaxed) == 0 ? 1 : 0;
    const size_t n = std::min(text.size(), sizeof bytes[next] - 1);
    std::memcpy(bytes[next], text.data(), n);
    bytes[next][n] = '\0';
    current.store(n > 0 ? next : -1, std::memory_order_release);
  }
};

struct LockFile {
  std::atomic<int> fd{-1};  // -1: the slot is free
  char path[4096];
};

Text g_note;
std::atomic<bool> g_bar_on_screen{false};
LockFile g_locks[4];

void write_text(const char* text) noexcept {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;  // nothing more can be said
    text += n, left -= size_t(n);
  }
}

const char* signal_name(int signal_number) noexcept {
  switch (signal_number) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "a signal";
  }
}

}  // namespace

void set_interrupt_note(const std::string& note) { g_note.assign(note); }

void note_progress_bar_on_screen(bool on_screen) {
  g_bar_on_screen.store(on_screen, std::memory_order_release);
}

void remember_lock_file(int fd, const std::string& path) {
  if (path.size() >= sizeof g_locks[0].path) return;  // too long to keep: left behind, as after a kill
  for (LockFile& lock : g_locks) {
    if (lock.fd.load(std::memory_order_acquire) != -1) continue;
    std::memcpy(lock.path, path.c_str(), path.size() + 1);
    lock.fd.store(fd, std::memory_order_release);
    return;
  }
}

void forget_lock_file(int fd) {
  for (LockFile& lock : g_locks)
    if (lock.fd.load(std::memory_order_acquire) == fd) lock.fd.store(-1, std::memory_order_release);
}

void on_ending_signal(int signal_number) noexcept {
  if (g_bar_on_screen.load(std::memory_order_acquire)) write_text("\r\033[K");
  for (LockFile& lock : g_locks) {
    const int fd = lock.fd.load(std::memory_order_acquire);
    struct stat held = {};
    struct stat there = {};
    if (fd != -1 && ::fstat(fd, &held) == 0 && ::lstat(lock.path, &there) == 0 &&
        held.st_dev == there.st_dev && held.st_ino == there.st_ino)
      ::unlink(lock.path);
  }
  const int note = g_note.current.load(std::memory_order_acquire);
  if (note < 0) return;
  write_text("subliminal: interrupted by ");
  write_text(signal_name(signal_number));
  write_text(g_note.bytes[note]);
  write_text("\n");
}

}  // namespace subliminal::app
