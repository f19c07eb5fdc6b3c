// engine/error.h — the typed exceptions every part of the library throws.
//
// Library code never prints or exits; it throws one of these, and only main()
// turns them into a message and an exit code:
//   InputError (and its children) — the user's input is wrong (a flag, a file, the
//                 environment): main() prints one line and exits with code 2.
//   OutOfMemoryError — the input asked for more memory than there is: also code 2.
//   Error      — anything else (a bug, a device fault): main() prints and exits 1 (the app's
//                 own NonFiniteError, a NaN/Inf stop, exits 3).
#pragma once

#include <stdexcept>
#include <string>

namespace subliminal {

// Base of every exception the library throws.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Something the user gave us is wrong: a flag, a file, the environment. Exit code 2.
struct InputError : Error {
  using Error::Error;
};

// A data file is missing or malformed; the message names the file and the defect.
struct DataError : InputError {
  using InputError::InputError;
};

// A tensor had the wrong shape, dtype or device for an op: a programming error.
struct ShapeError : Error {
  using Error::Error;
};

// A CUDA, cuBLAS(Lt), cuRAND or cuDNN call failed; the message carries the call, file and line.
struct DeviceError : Error {
  using Error::Error;
};

// The device could not give us the memory we asked for; the message says how much.
struct OutOfMemoryError : DeviceError {
  using DeviceError::DeviceError;
};

// The user asked for a GPU and there is none we can use (no driver, no device).
struct NoGpuError : InputError {
  using InputError::InputError;
};

// Text from outside (a flag's value, a name inside a file) made safe for a one-line message:
// quoted, control characters escaped, cut to `limit` characters.
inline std::string quoted(const std::string& text, size_t limit = 80) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() > limit) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

// A file name for a one-line message: as it is when every character prints, else quoted() (a
// newline in a name would break the line).
inline std::string path_text(const std::string& path) {
  for (const char c : path)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return quoted(path, 200);
  return path;
}

}  // namespace subliminal
