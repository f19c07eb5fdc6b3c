// apps/subliminal/interrupt.h — what a signal that ends the program (Ctrl-C, kill, a closed
// terminal) says and undoes on the way out. main()'s handler calls on_ending_signal; everything
// it touches was prepared beforehand in static storage, because a signal handler may only make
// async-signal-safe calls (write, unlink, fstat: no allocation, no stdio, no locks).
//
//   subliminal: interrupted by SIGINT before the run ended: --json r.json was not written
//   subliminal: interrupted by SIGINT: the configurations that finished are in runs/lr.csv and
//               runs/lr.jsonl; the same command resumes the sweep
#pragma once

#include <string>

namespace subliminal::app {

// The line the handler prints after "subliminal: interrupted by SIGxxx" (e.g. " before the run
// ended: …"); "" prints none (after the run's outputs are written, there is nothing to say).
// Longer lines are cut at 1 KB.
void set_interrupt_note(const std::string& note);

// A progress bar is drawn on stderr's line: the handler erases it first, so that its line
// starts at the left edge, as every error's does.
void note_progress_bar_on_screen(bool on_screen);

// A sweep's lock file, open at `fd` and locked: the handler removes it if `path` still names
// that file (a killed sweep's lock is reused by the next, but an interrupted one should not
// look like a sweep still running). At most 4 at once; forget_lock_file when it is released.
void remember_lock_file(int fd, const std::string& path);
void forget_lock_file(int fd);

// From the signal handler: erases the progress bar, removes the remembered lock files and
// writes the note's line to stderr.
void on_ending_signal(int signal_number) noexcept;

}  // namespace subliminal::app
