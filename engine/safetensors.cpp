// engine/safetensors.cpp — a defensive safetensors reader and an atomic writer.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace subliminal {
namespace {

const std::map<std::string, DType>& dtype_codes() {
  static const std::map<std::string, DType> codes = {
      {"F32", DType::f32}, {"F64", DType::f64}, {"I32", DType::i32}, {"I64", DType::i64}, {"U8", DType::u8}};
  return codes;
}

std::string code_of(DType t) {
  for (const auto& [code, dtype] : dtype_codes())
    if (dtype == t) return code;
  return "?";
}

[[noreturn]] void defect(const std::string& name, const std::string& what) {
  throw DataError(name + ": not a valid safetensors file: " + what);
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte offsets into the data section
};

// The parser's message quotes the bytes it read last, which may be anything: printable ASCII
// kept, every other byte as \xNN.
std::string printable(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", unsigned(byte));
      out += hex;
    }
  }
  return out;
}

// The file's layout: an 8-byte little-endian header length, the header's JSON, then the data.
// Returns the header, a JSON object, and sets `header_bytes` to the length of its text.
nlohmann::json read_header(const uint8_t* bytes, size_t size, const std::string& name,
                           const SafetensorsLimits& limits, uint64_t& header_bytes) {
  if (size < 8)
    defect(name, "only " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | bytes[i];
  if (header_bytes > limits.max_header_bytes)
    defect(name, "header length " + std::to_string(header_bytes) + " exceeds the " +
                     std::to_string(limits.max_header_bytes) + "-byte limit");
  if (header_bytes > size - 8)
    defect(name, "header length " + std::to_string(header_bytes) + " runs past the end of the " +
                     std::to_string(size) + "-byte file");
  nlohmann::json header;
  // A name given twice in the header's object: JSON parsers keep one of them (nlohmann the last,
  // others the first), so two readers could see two different files. Refused, naming it.
  std::set<std::string> names;
  std::string twice;
  const auto note_names = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 &&
        !names.insert(parsed.get<std::string>()).second && twice.empty())
      twice = parsed.get<std::string>();
    return true;
  };
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_bytes, note_names);
  } catch (const nlohmann::json::exception& e) {
    defect(name, "header is not valid JSON (" + printable(e.what()) + ")");
  }
  if (!header.is_object()) defect(name, "header is not a JSON object");
  if (!twice.empty()) defect(name, "header names " + subliminal::quoted(twice) + " twice");
  return header;
}

// "__metadata__": an object of strings.
std::map<std::string, std::string> read_metadata(const nlohmann::json& value, const std::string& name) {
  if (!value.is_object()) defect(name, "__metadata__ is not an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, text] : value.items()) {
    if (!text.is_string()) defect(name, "__metadata__ value for " + quoted(key) + " is not a string");
    metadata[key] = text.get<std::string>();
  }
  return metadata;
}

// One tensor's header entry, {"dtype": "F32", "shape": [O, I], "data_offsets": [begin, end]},
// checked against a data section of `data_bytes`: a known dtype, at most 8 dimensions, offsets
// inside the data and exactly as many bytes as the shape's elements need — with no product or
// sum that could overflow on the way. Names and values come from the file: quoted (one line,
// bounded), and JSON values are described by their type, never dumped (dumping is recursive: a
// deeply nested value would overflow the stack).
Entry read_entry(const std::string& key, const nlohmann::json& value, uint64_t data_bytes,
                 const std::string& name) {
  const std::string where = "tensor " + quoted(key);
  if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
      !value.contains("data_offsets"))
    defect(name, where + " lacks dtype, shape or data_offsets");
  const auto& dtype = value["dtype"];
  if (!dtype.is_string() || !dtype_codes().count(dtype.get<std::string>()))
    defect(name, where + " has an unsupported dtype " +
                     (dtype.is_string() ? quoted(dtype.get<std::string>()) : std::string(dtype.type_name())));
  Entry e{key, dtype_codes().at(dtype.get<std::string>()), {}, 0, 0};

  const auto& shape = value["shape"];
  if (!shape.is_array() || shape.size() > 8)
    defect(name, where + " has a bad shape (expected an array of at most 8 dimensions)");
  uint64_t count = 1;
  for (const auto& d : shape) {
    if (!d.is_number_unsigned())
      defect(name, where + " has a bad shape (an entry is not a whole number ≥ 0)");
    const uint64_t dim = d.get<uint64_t>();
    if (dim > data_bytes && dim != 0)  // also keeps every dimension far below 2^63
      defect(name, where + " has a bad shape (a dimension of " + std::to_string(dim) +
                       ", more than the file's data bytes)");
    if (dim != 0 && count > data_bytes / dim)
      defect(name, where + " declares more elements than the file holds");
    count *= dim;
    e.shape.push_back(int64_t(dim));
  }

  const auto& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    defect(name, where + " has bad data_offsets (expected two whole numbers)");
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.begin > e.end || e.end > data_bytes)
    defect(name, where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                     ") outside the " + std::to_string(data_bytes) + " data bytes");
  if (count * dtype_size(e.dtype) != e.end - e.begin)
    defect(name, where + " has " + std::to_string(e.end - e.begin) + " bytes for " + std::to_string(count) +
                     " " + dtype_name(e.dtype) + " values");
  return e;
}

// The data must be covered exactly: sorted by offset, each entry starts where the last ended,
// and the last ends where the file does.
void check_coverage(const std::vector<Entry>& entries, uint64_t data_bytes, const std::string& name) {
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != covered)
      defect(name, "tensor " + quoted(e->name) + " " +
                       (e->begin < covered ? "overlaps another" : "leaves a hole before it"));
    covered = e->end;
  }
  if (covered != data_bytes)
    defect(name, std::to_string(data_bytes - covered) + " data bytes belong to no tensor");
}

}  // namespace

SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name,
                                  SafetensorsLimits limits) {
  uint64_t header_bytes = 0;
  const nlohmann::json header = read_header(bytes, size, name, limits, header_bytes);
  const uint8_t* data = bytes + 8 + header_bytes;
  const uint64_t data_bytes = size - 8 - header_bytes;

  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      file.metadata = read_metadata(value, name);
    else
      entries.push_back(read_entry(key, value, data_bytes, name));
  }
  check_coverage(entries, data_bytes, name);

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::cpu);
    if (e.end > e.begin) std::memcpy(t.raw(), data + e.begin, e.end - e.begin);
    file.tensors.push_back({e.name, t});
  }
  return file;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path, SafetensorsLimits limits) {
  const std::string name = path_text(path.string());
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) throw DataError(name + ": no such file");
  if (!std::filesystem::is_regular_file(status)) throw DataError(name + ": not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw DataError(name + ": cannot read its size (" + ec.message() + ")");
  if (size > limits.max_file_bytes)
    throw DataError(name + ": " + std::to_string(size) + " bytes is larger than the " +
                    std::to_string(limits.max_file_bytes) + "-byte limit");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(name + ": cannot open (" + std::strerror(errno) + ")");
  std::vector<uint8_t> bytes(size);
  if (size && !in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size)))
    throw DataError(name + ": read failed after " + std::to_string(in.gcount()) + " of " +
                    std::to_string(size) + " bytes");
  return parse_safetensors(bytes.data(), bytes.size(), name, limits);
}

namespace {

// Where write_file_atomically puts `requested`: the file a chain of symbolic links ends at (the
// links stay; a dangling one gets its target created), and the mkstemp pattern of the temporary
// file beside it. Anything there that is not a regular file (a directory, a device, a FIFO) is
// refused.
struct AtomicTarget {
  std::filesystem::path path;
  std::string temp_pattern;
};

// Where a chain of symbolic links starting at `path` ends (a relative target is relative to its
// link's folder); `path` itself when it is no link. Refuses a loop.
std::filesystem::path follow_links(const std::filesystem::path& requested) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path path = requested;
  for (int links = 0; fs::is_symlink(fs::symlink_status(path, ec)); ++links) {
    if (links == 40) throw InputError(path_text(requested.string()) + ": too many levels of symbolic links");
    const fs::path target = fs::read_symlink(path, ec);
    path = target.is_absolute() ? target : path.parent_path() / target;
  }
  return path;
}

AtomicTarget atomic_target(const std::filesystem::path& requested) {
  namespace fs = std::filesystem;
  const std::string name = path_text(requested.string());
  std::error_code ec;
  const fs::path path = follow_links(requested);
  const auto status = fs::status(path, ec);
  if (fs::exists(status) && !fs::is_regular_file(status))
    throw InputError(name + ": not a regular file; refusing to replace it");
  // The rename that replaces a file needs only the directory's permission, so a file made
  // read-only, or one this user may not write, would be replaced unasked: refused (root included,
  // whom access() lets write anything, when no one may write the file).
  if (fs::exists(status) && ((status.permissions() & (fs::perms::owner_write | fs::perms::group_write |
                                                      fs::perms::others_write)) == fs::perms::none ||
                             ::faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) != 0))
    throw InputError(name +
                     ": is read-only for this user; refusing to replace it (make it writable, or "
                     "choose another name)");
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  // ".NAME.tmp-XXXXXX", NAME cut short where the whole would pass the 255 bytes a file name may
  // have (a legal output name of 245 bytes would otherwise be refused as "File name too long").
  constexpr size_t kNameMax = 255, kAround = 1 + 11;  // "." and ".tmp-XXXXXX"
  const std::string filename = path.filename().string();
  if (filename.size() > kNameMax)  // the rename would fail, after the work
    throw InputError(name + ": the file name is " + std::to_string(filename.size()) +
                     " bytes long; a file name may have at most 255");
  std::string temp_name = ".";  // built in steps: g++ 12 warns falsely on "." + string (GCC bug 105329)
  temp_name += filename.substr(0, kNameMax - kAround);
  temp_name += ".tmp-XXXXXX";
  return {path, (dir / temp_name).string()};
}

// The temporary file a write is filling, for remove_unfinished_file() — called from a signal
// handler, so it may only read plain memory and call unlink (async-signal-safe). One write runs
// at a time (the program's main thread writes its files one after another).
char g_unfinished_path[4096];
std::atomic<bool> g_has_unfinished{false};
static_assert(std::atomic<bool>::is_always_lock_free, "read from a signal handler");

// Registers a temporary file for the life of one write.
class UnfinishedFile {
 public:
  explicit UnfinishedFile(const std::string& temp) {
    if (temp.size() >= sizeof g_unfinished_path) return;  // too long to record: only left on a kill
    std::memcpy(g_unfinished_path, temp.c_str(), temp.size() + 1);
    g_has_unfinished.store(true, std::memory_order_release);
  }
  ~UnfinishedFile() { g_has_unfinished.store(false, std::memory_order_release); }
  UnfinishedFile(const UnfinishedFile&) = delete;
  UnfinishedFile& operator=(const UnfinishedFile&) = delete;
};

// mkstemp on the pattern, or an InputError naming the file we meant to write.
int create_temporary(const std::string& name, std::string& temp) {
  const int fd = mkstemp(temp.data());
  if (fd < 0) {
    const std::filesystem::path dir = std::filesystem::path(temp).parent_path();
    throw InputError(name + ": cannot create a file in " + path_text(dir.string()) + " (" +
                     std::strerror(errno) + ")");
  }
  return fd;
}

}  // namespace

std::filesystem::path resolved_path(const std::filesystem::path& requested) {
  std::error_code ec;
  const std::filesystem::path end = follow_links(requested);
  const std::filesystem::path absolute = std::filesystem::absolute(end, ec);
  if (ec) return end.lexically_normal();
  const std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, ec);
  return ec ? absolute.lexically_normal() : canonical;
}

void remove_unfinished_file() noexcept {
  if (g_has_unfinished.load(std::memory_order_acquire)) ::unlink(g_unfinished_path);
}

void check_file_can_be_written(const std::filesystem::path& requested) {
  const AtomicTarget target = atomic_target(requested);
  std::string temp = target.temp_pattern;
  const int fd = create_temporary(path_text(requested.string()), temp);
  ::close(fd);
  ::unlink(temp.c_str());
  // The final rename over an existing file in a sticky directory (like /tmp) is refused unless we
  // own the file or the directory (or are root): creating a file there says nothing about that.
  const std::filesystem::path dir = target.path.has_parent_path() ? target.path.parent_path() : ".";
  struct stat file {};
  struct stat folder {};
  const uid_t me = ::geteuid();
  if (me != 0 && ::stat(target.path.c_str(), &file) == 0 && ::stat(dir.c_str(), &folder) == 0 &&
      (folder.st_mode & S_ISVTX) && file.st_uid != me && folder.st_uid != me)
    throw InputError(path_text(requested.string()) +
                     ": cannot be replaced: another user's file in a sticky directory (only its owner may)");
}

void write_file_atomically(const std::filesystem::path& requested, const std::string& contents) {
  const std::string name = path_text(requested.string());
  const AtomicTarget target = atomic_target(requested);
  const std::filesystem::path& path = target.path;
  std::string temp = target.temp_pattern;
  const int fd = create_temporary(name, temp);
  const UnfinishedFile unfinished(temp);  // a kill from here on removes it (remove_unfinished_file)
  size_t written = 0;
  while (written < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      throw InputError(name + ": write failed (" + std::strerror(err) + ")");
    }
    written += size_t(n);
  }
  // A file replaced keeps its permission bits (a resumed sweep rewrites its rows); a new one is
  // 0644, as a plain open() would make it under the usual umask.
  struct stat existing {};
  fchmod(fd, ::stat(path.c_str(), &existing) == 0 ? (existing.st_mode & 07777) : 0644);
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw InputError(name + ": write failed (" + std::strerror(err) + ")");
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw InputError(name + ": cannot replace the file (" + std::strerror(err) + ")");
  }
}

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite) {
  std::error_code ec;
  if (!overwrite && std::filesystem::exists(path, ec))
    throw InputError(path_text(path.string()) + ": already exists (use --force to overwrite it)");
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<Tensor> host;
  for (const NamedTensor& nt : tensors) {
    // Names the reader would refuse (read_safetensors): a caller's bug, caught before writing.
    if (nt.name == "__metadata__" || header.contains(nt.name))
      throw Error("write_safetensors: " + path_text(path.string()) + ": tensor name " + quoted(nt.name) +
                  (nt.name == "__metadata__" ? " is reserved for the metadata" : " given twice"));
    Tensor t = nt.tensor.device() == Device::cpu ? nt.tensor : nt.tensor.to(Device::cpu);
    header[nt.name] = {
        {"dtype", code_of(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
    host.push_back(t);
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // pad so the data starts 8-byte aligned
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(json.size()) >> (8 * i)) & 0xff);
  out += json;
  for (const Tensor& t : host) out.append(static_cast<const char*>(t.raw()), t.bytes());
  write_file_atomically(path, out);
}

}  // namespace subliminal
