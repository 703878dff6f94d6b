// safetensors reader/writer; byte layout and rules in safetensors.h and formats.md 1.4-1.5.
#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/output_dir.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;
// ordered_json keeps the header's key order, so entries() can report tensors as stored.
using OJson = nlohmann::ordered_json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::string offsets_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// JSON string literal (with quotes) for a name or metadata value; same escapes as serde_json
// (\" \\ \b \f \n \r \t, other control bytes as \u00xx, everything else raw UTF-8).
std::string json_quote(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
}

// A JSON number that is a non-negative integer fitting in u64, else nullopt.
bool json_to_u64(const OJson& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

// Parses JSON text, rejecting duplicate keys in any object (nlohmann would silently keep one).
Expected<OJson> parse_json_no_duplicates(const std::string& origin, const char* text, size_t len) {
  std::vector<std::set<std::string>> keys_stack;  // one key set per open object
  std::string duplicate;
  OJson::parser_callback_t cb = [&](int /*depth*/, OJson::parse_event_t event, OJson& parsed) {
    switch (event) {
      case OJson::parse_event_t::object_start:
        keys_stack.emplace_back();
        break;
      case OJson::parse_event_t::object_end:
        if (!keys_stack.empty()) keys_stack.pop_back();
        break;
      case OJson::parse_event_t::key:
        if (!keys_stack.empty() && !keys_stack.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  OJson j;
  try {
    j = OJson::parse(text, text + len, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const OJson::exception& e) {
    std::string what = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix; keep the position and reason.
    if (const size_t close = what.find("] "); what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      what = what.substr(close + 2);
    return Status::error(origin + ": invalid JSON header: " + what);
  }
  if (!duplicate.empty()) return Status::error(origin + ": duplicate key " + quote(duplicate) + " in header");
  return j;
}

Status parse_entry(const std::string& origin, const std::string& name, const OJson& info,
                   SafetensorsEntry* e) {
  const std::string where = origin + ": tensor " + quote(name);
  if (!info.is_object()) return Status::error(where + " is not a JSON object");
  for (const auto& kv : info.items())
    if (kv.key() != "dtype" && kv.key() != "shape" && kv.key() != "data_offsets")
      return Status::error(where + " has unknown key " + quote(kv.key()));
  if (!info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
    return Status::error(where + " needs the keys dtype, shape and data_offsets");

  const OJson& dt = info["dtype"];
  if (!dt.is_string()) return Status::error(where + " dtype is not a string");
  const auto dtype = dtype_from_name(dt.get<std::string>());
  if (!dtype) return Status::error(where + " has unknown dtype " + quote(dt.get<std::string>()));

  const OJson& sh = info["shape"];
  if (!sh.is_array()) return Status::error(where + " shape is not an array");
  e->shape.clear();
  uint64_t numel = 1;  // with checked products: the reference rejects overflow even before a 0
  for (const OJson& d : sh) {
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)
      return Status::error(where + " has negative dimension " + std::to_string(d.get<int64_t>()));
    uint64_t dim = 0;
    if (!json_to_u64(d, &dim)) return Status::error(where + " shape has a non-integer dimension " + d.dump());
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, dim, &numel) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return Status::error(where + " shape " + sh.dump() + " has too many elements");
    e->shape.push_back(static_cast<int64_t>(dim));
  }

  const OJson& off = info["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !json_to_u64(off[0], &e->begin) || !json_to_u64(off[1], &e->end))
    return Status::error(where + " data_offsets " + off.dump() + " is not [begin, end] of non-negative integers");
  if (e->end < e->begin)
    return Status::error(where + " data_offsets " + offsets_str(e->begin, e->end) + " end before begin");

  uint64_t bits = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_bits(*dtype)), &bits) || bits % 8 != 0)
    return Status::error(where + " shape " + shape_str(e->shape) + " is not a whole number of bytes of " +
                         std::string(dtype_name(*dtype)));
  if (e->end - e->begin != bits / 8)
    return Status::error(where + " data_offsets " + offsets_str(e->begin, e->end) + " do not match dtype " +
                         std::string(dtype_name(*dtype)) + " shape " + shape_str(e->shape) + " (" +
                         std::to_string(bits / 8) + " bytes)");
  e->name = name;
  e->dtype = *dtype;
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reader

Expected<std::vector<SafetensorsEntry>> SafetensorsFile::parse_header(
    const std::string& origin, const char* header, size_t header_len, uint64_t data_size,
    std::map<std::string, std::string>* metadata) {
  LLMQ_ASSIGN_OR_RETURN(const OJson j, parse_json_no_duplicates(origin, header, header_len));
  if (!j.is_object()) return Status::error(origin + ": header is not a JSON object");
  // The reference reader also refuses leading whitespace.
  if (header[0] != '{') return Status::error(origin + ": header does not start with '{'");

  std::vector<SafetensorsEntry> entries;
  if (metadata) metadata->clear();
  for (const auto& kv : j.items()) {
    if (kv.key() == "__metadata__") {
      if (!kv.value().is_object()) return Status::error(origin + ": __metadata__ is not a JSON object");
      for (const auto& m : kv.value().items()) {
        if (!m.value().is_string())
          return Status::error(origin + ": __metadata__ value of " + quote(m.key()) + " is not a string");
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    SafetensorsEntry e;
    LLMQ_RETURN_IF_ERROR(parse_entry(origin, kv.key(), kv.value(), &e));
    if (e.end > data_size)
      return Status::error(origin + ": tensor " + quote(e.name) + " data_offsets " + offsets_str(e.begin, e.end) +
                           " extend past the end of the data buffer (" + std::to_string(data_size) + " bytes)");
    entries.push_back(std::move(e));
  }

  // The entries, sorted by offset, must tile [0, data_size) exactly.
  std::vector<const SafetensorsEntry*> sorted;
  sorted.reserve(entries.size());
  for (const auto& e : entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  uint64_t expected_begin = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : sorted) {
    const std::string after = prev ? " after tensor " + quote(prev->name) + " " + offsets_str(prev->begin, prev->end)
                                   : " at the start of the data buffer";
    if (e->begin < expected_begin)
      return Status::error(origin + ": tensor " + quote(e->name) + " data_offsets " + offsets_str(e->begin, e->end) +
                           " overlap tensor " + quote(prev->name) + " " + offsets_str(prev->begin, prev->end));
    if (e->begin > expected_begin)
      return Status::error(origin + ": hole of " + std::to_string(e->begin - expected_begin) + " bytes before tensor " +
                           quote(e->name) + " " + offsets_str(e->begin, e->end) + after);
    expected_begin = e->end;
    prev = e;
  }
  if (expected_begin != data_size)
    return Status::error(origin + ": " + std::to_string(data_size - expected_begin) +
                         " trailing bytes after the last tensor (data buffer " + std::to_string(data_size) +
                         " bytes, tensors end at " + std::to_string(expected_begin) + ")");
  return entries;
}

Expected<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::error(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error(path + ": not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return Status::error(path + ": truncated: file is " + std::to_string(file_size) +
                         " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) return Status::error(path + ": mmap failed: " + std::strerror(map_err));

  SafetensorsFile f;
  f.path_ = path;
  f.map_ = static_cast<const uint8_t*>(map);
  f.map_size_ = file_size;  // from here on the destructor unmaps

  uint64_t n = 0;  // little-endian u64, assembled bytewise (host order independent)
  for (int i = 7; i >= 0; --i) n = (n << 8) | f.map_[i];
  if (n > kSafetensorsMaxHeader)
    return Status::error(path + ": header length " + std::to_string(n) + " exceeds the limit of " +
                         std::to_string(kSafetensorsMaxHeader) + " bytes");
  if (n > file_size - 8)
    return Status::error(path + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                         std::to_string(file_size) + " bytes)");
  f.data_start_ = 8 + n;
  LLMQ_ASSIGN_OR_RETURN(f.entries_, parse_header(path, reinterpret_cast<const char*>(f.map_ + 8), n,
                                                 file_size - f.data_start_, &f.metadata_));
  for (size_t i = 0; i < f.entries_.size(); ++i) f.index_[f.entries_[i].name] = i;
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)),
      entries_(std::move(o.entries_)),
      index_(std::move(o.index_)),
      metadata_(std::move(o.metadata_)),
      map_(std::exchange(o.map_, nullptr)),
      map_size_(std::exchange(o.map_size_, 0)),
      data_start_(o.data_start_) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
    path_ = std::move(o.path_);
    entries_ = std::move(o.entries_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    data_start_ = o.data_start_;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Expected<TensorView> SafetensorsFile::view(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) return Status::error(path_ + ": no tensor " + quote(name));
  // Offsets were validated against the mapped size at open.
  return TensorView(e->dtype, e->shape, const_cast<uint8_t*>(map_ + data_start_ + e->begin));
}

// ---------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add(const std::string& name, const TensorView& v) { add(name, Tensor::copy_of(v)); }

void SafetensorsWriter::check_name(const std::string& name, DType dtype) {
  LLMQ_CHECK(name != "__metadata__", "'__metadata__' cannot be a tensor name");
  LLMQ_CHECK(dtype != DType::kI4, "tensor '" << name << "': I4 has no safetensors dtype; store packed bytes");
}

void SafetensorsWriter::add(const std::string& name, Tensor&& t) {
  check_name(name, t.dtype());
  Entry e{t.dtype(), t.shape(), static_cast<uint64_t>(t.nbytes()), std::move(t), 0};
  LLMQ_CHECK(tensors_.emplace(name, std::move(e)).second, "tensor '" << name << "' added twice");
}

void SafetensorsWriter::add_spilled(const std::string& name, DType dtype, const Shape& shape, uint64_t offset) {
  check_name(name, dtype);
  Entry e{dtype, shape, static_cast<uint64_t>(dtype_nbytes(dtype, shape_numel(shape))), Tensor(), offset};
  LLMQ_CHECK(tensors_.emplace(name, std::move(e)).second, "tensor '" << name << "' added twice");
}

uint64_t SafetensorsWriter::payload_bytes() const {
  uint64_t total = 0;
  for (const auto& kv : tensors_) total += kv.second.nbytes;
  return total;
}

namespace {

using WriterEntry = SafetensorsWriter::Entry;

// Canonical order: descending element size (keeps every tensor naturally aligned), then name.
std::vector<std::pair<const std::string*, const WriterEntry*>> canonical_order(const std::map<std::string, WriterEntry>& m) {
  std::vector<std::pair<const std::string*, const WriterEntry*>> out;
  out.reserve(m.size());
  for (const auto& kv : m) out.emplace_back(&kv.first, &kv.second);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return dtype_bits(a.second->dtype) > dtype_bits(b.second->dtype);  // names already sorted
  });
  return out;
}

Status write_all(int fd, const void* data, uint64_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, static_cast<size_t>(std::min<uint64_t>(n, 1u << 30)));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Status::error(path + ": write failed: " + std::strerror(errno));
    p += w;
    n -= static_cast<uint64_t>(w);
  }
  return Status::ok();
}

// n bytes at `offset` of in_fd appended to out_fd: copy_file_range (in the kernel, no user
// buffer), else read/write through a 4 MiB buffer where the kernel cannot (other filesystem).
Status copy_range(int in_fd, uint64_t offset, uint64_t n, int out_fd, const std::string& path) {
  loff_t in_off = static_cast<loff_t>(offset);
  while (n > 0) {
    const ssize_t c = ::copy_file_range(in_fd, &in_off, out_fd, nullptr, static_cast<size_t>(std::min<uint64_t>(n, 1u << 30)), 0);
    if (c < 0 && errno == EINTR) continue;
    if (c <= 0) break;
    n -= static_cast<uint64_t>(c);
  }
  std::vector<char> buf;
  while (n > 0) {
    if (buf.empty()) buf.resize(4u << 20);
    const ssize_t r = ::pread(in_fd, buf.data(), static_cast<size_t>(std::min<uint64_t>(n, buf.size())), in_off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return Status::error(path + ": reading the spilled tensor data failed: " + std::strerror(errno));
    LLMQ_RETURN_IF_ERROR(write_all(out_fd, buf.data(), static_cast<uint64_t>(r), path));
    in_off += r;
    n -= static_cast<uint64_t>(r);
  }
  return Status::ok();
}

// Closes the descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string SafetensorsWriter::header_json() const {
  std::string h = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& kv : metadata_) {
    if (!first) h += ',';
    first = false;
    h += json_quote(kv.first) + ':' + json_quote(kv.second);
  }
  h += '}';
  uint64_t offset = 0;
  for (const auto& [name, e] : canonical_order(tensors_)) {
    h += ',' + json_quote(*name) + ":{\"dtype\":\"" + std::string(dtype_name(e->dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < e->shape.size(); ++i) h += (i ? "," : "") + std::to_string(e->shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + e->nbytes) + "]}";
    offset += e->nbytes;
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');  // the data buffer starts 8-aligned
  return h;
}

Status SafetensorsWriter::write(const std::string& path, const std::string& spill_path) const {
  const std::string header = header_json();
  Fd out{::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  if (out.fd < 0) return Status::error(path + ": cannot open for writing: " + std::strerror(errno));
  Fd spill;
  uint8_t len[8];  // u64 little-endian
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  LLMQ_RETURN_IF_ERROR(write_all(out.fd, len, 8, path));
  LLMQ_RETURN_IF_ERROR(write_all(out.fd, header.data(), header.size(), path));
  for (const auto& [name, e] : canonical_order(tensors_)) {
    if (!e->data.empty() || e->nbytes == 0) {
      LLMQ_RETURN_IF_ERROR(write_all(out.fd, e->data.raw(), e->nbytes, path));
      continue;
    }
    if (spill.fd < 0) {
      spill.fd = ::open(spill_path.c_str(), O_RDWR | O_CLOEXEC);
      if (spill.fd < 0) return Status::error(spill_path + ": cannot open the spilled tensor data: " + std::strerror(errno));
    }
    LLMQ_RETURN_IF_ERROR(copy_range(spill.fd, e->spill_offset, e->nbytes, out.fd, path));
    // Give the copied bytes' disk space back (the spill file is scratch), so assembling a file
    // needs about its size once, not twice; filesystems without hole punching keep it.
    (void)::fallocate(spill.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(e->spill_offset),
                static_cast<off_t>(e->nbytes));
  }
  if (::close(out.fd) != 0) {
    out.fd = -1;
    return Status::error(path + ": write failed: " + std::strerror(errno));
  }
  out.fd = -1;
  return Status::ok();
}

void release_mapped_pages(const void* data, size_t bytes) {
  if (bytes == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Whole pages around the range (a neighbour's page only faults back in from the cache).
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes + page - 1) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // EINVAL etc.: nothing to do
}

// ---------------------------------------------------------------------------------------------
// Sharded writer

ShardedCheckpointWriter::ShardedCheckpointWriter(std::string dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {}

Status ShardedCheckpointWriter::add(const std::string& name, Tensor&& t) { return add(name, t.view()); }

ShardedCheckpointWriter::ShardedCheckpointWriter(ShardedCheckpointWriter&& o) noexcept
    : dir_(std::move(o.dir_)),
      max_shard_bytes_(o.max_shard_bytes_),
      current_(std::move(o.current_)),
      spill_fd_(std::exchange(o.spill_fd_, -1)),
      spill_size_(o.spill_size_),
      shard_tmp_names_(std::move(o.shard_tmp_names_)),
      weight_shard_(std::move(o.weight_shard_)),
      total_size_(o.total_size_),
      finished_(o.finished_) {}

ShardedCheckpointWriter::~ShardedCheckpointWriter() {
  if (spill_fd_ >= 0) {  // abandoned (an error before finish): the staged directory goes away too
    ::close(spill_fd_);
    std::error_code ec;
    fs::remove(spill_path(), ec);
  }
}

std::string ShardedCheckpointWriter::spill_path() const {
  char name[64];
  std::snprintf(name, sizeof(name), ".llmq-shard-%05zu.data.tmp", shard_tmp_names_.size() + 1);
  return (fs::path(dir_) / name).string();
}

Status ShardedCheckpointWriter::add(const std::string& name, const TensorView& t) {
  LLMQ_CHECK(t.is_contiguous() && t.device == Device::kCpu, "tensor '" << name << "': a contiguous host view");
  LLMQ_CHECK(!finished_, "ShardedCheckpointWriter::add after finish");
  if (weight_shard_.count(name)) return Status::error(dir_ + ": tensor " + quote(name) + " written twice");
  const uint64_t nbytes = static_cast<uint64_t>(t.nbytes());
  // A new shard starts when this tensor would push a non-empty shard past the limit; a tensor
  // larger than the limit thus gets a shard of its own (huggingface_hub's splitter).
  if (current_.size() > 0 && current_.payload_bytes() + nbytes > max_shard_bytes_)
    LLMQ_RETURN_IF_ERROR(flush_shard());
  if (spill_fd_ < 0) {
    spill_fd_ = ::open(spill_path().c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (spill_fd_ < 0) return Status::error(spill_path() + ": cannot create: " + std::strerror(errno));
    spill_size_ = 0;
  }
  LLMQ_RETURN_IF_ERROR(write_all(spill_fd_, t.data, nbytes, spill_path()));
  current_.add_spilled(name, t.dtype, t.shape, spill_size_);
  spill_size_ += nbytes;
  weight_shard_[name] = shard_tmp_names_.size();
  total_size_ += nbytes;
  return Status::ok();
}

Status ShardedCheckpointWriter::flush_shard() {
  // Not *.safetensors, so an interrupted run leaves no file a loader's glob would pick up.
  char name[64];
  std::snprintf(name, sizeof(name), ".llmq-shard-%05zu.tmp", shard_tmp_names_.size() + 1);
  const std::string path = (fs::path(dir_) / name).string();
  const std::string spill = spill_path();
  LLMQ_RETURN_IF_ERROR(current_.write(path, spill));
  if (spill_fd_ >= 0) {
    ::close(spill_fd_);
    spill_fd_ = -1;
    std::error_code ec;
    fs::remove(spill, ec);
  }
  shard_tmp_names_.push_back(path);
  current_ = SafetensorsWriter();
  return Status::ok();
}

Status ShardedCheckpointWriter::finish() {
  LLMQ_CHECK(!finished_, "ShardedCheckpointWriter::finish called twice");
  if (current_.size() > 0 || shard_tmp_names_.empty()) LLMQ_RETURN_IF_ERROR(flush_shard());
  finished_ = true;
  const size_t n = shard_tmp_names_.size();
  std::vector<std::string> final_names(n);
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, n);
    final_names[i] = n == 1 ? kSingleName : name;
    std::error_code ec;
    const fs::path target = fs::path(dir_) / final_names[i];
    fs::rename(shard_tmp_names_[i], target, ec);
    if (ec) return Status::error(target.string() + ": cannot move shard into place: " + ec.message());
  }
  if (n == 1) return Status::ok();

  nlohmann::json index;  // std::map keys: sorted, as HF's json.dumps(sort_keys=True)
  index["metadata"]["total_size"] = total_size_;
  nlohmann::json& weight_map = index["weight_map"];
  weight_map = nlohmann::json::object();
  for (const auto& [tensor, shard] : weight_shard_) weight_map[tensor] = final_names[shard];
  return write_file_atomic((fs::path(dir_) / kIndexName).string(), index.dump(2, ' ', true) + "\n",
                           /*force=*/true);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directory

Expected<CheckpointTensors> CheckpointTensors::open(const std::string& dir) {
  CheckpointTensors ct;
  ct.dir_ = dir;
  const fs::path index_path = fs::path(dir) / kIndexName;
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    const fs::path single = fs::path(dir) / kSingleName;
    if (!fs::exists(single, ec))
      return Status::error(dir + ": no " + kSingleName + " or " + kIndexName + " in the checkpoint directory");
    LLMQ_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(single.string()));
    for (const auto& e : f.entries()) ct.where_[e.name] = 0;
    ct.files_.push_back(std::move(f));
    return ct;
  }

  const std::string ipath = index_path.string();
  std::ifstream in(ipath, std::ios::binary);
  if (!in) return Status::error(ipath + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  LLMQ_ASSIGN_OR_RETURN(const OJson index, parse_json_no_duplicates(ipath, text.data(), text.size()));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    return Status::error(ipath + ": no \"weight_map\" object");

  std::map<std::string, size_t> file_ids;  // shard file name -> index into files_
  std::map<std::string, std::string> tensor_file;
  for (const auto& kv : index["weight_map"].items()) {
    if (!kv.value().is_string())
      return Status::error(ipath + ": weight_map entry for " + quote(kv.key()) + " is not a string");
    const std::string file = kv.value().get<std::string>();
    // Only plain names: a hostile index must not make us open files outside the directory.
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      return Status::error(ipath + ": weight_map file " + quote(file) + " is not a plain file name");
    tensor_file[kv.key()] = file;
    file_ids.emplace(file, 0);
  }
  for (auto& [file, id] : file_ids) {
    const fs::path shard = fs::path(dir) / file;
    if (!fs::exists(shard, ec))
      return Status::error(ipath + ": shard " + quote(file) + " listed in weight_map does not exist");
    LLMQ_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(shard.string()));
    id = ct.files_.size();
    ct.files_.push_back(std::move(f));
  }
  for (const auto& [tensor, file] : tensor_file) {
    const size_t id = file_ids.at(file);
    if (!ct.files_[id].contains(tensor))
      return Status::error(ipath + ": tensor " + quote(tensor) + " is mapped to " + quote(file) +
                           ", which does not contain it");
    ct.where_[tensor] = id;
  }
  return ct;
}

bool CheckpointTensors::contains(const std::string& name) const { return where_.count(name) != 0; }

const SafetensorsEntry* CheckpointTensors::find(const std::string& name) const {
  const auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second].find(name);
}

Expected<TensorView> CheckpointTensors::view(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) return Status::error(dir_ + ": checkpoint has no tensor " + quote(name));
  return files_[it->second].view(name);
}

std::string CheckpointTensors::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  return it == where_.end() ? dir_ : files_[it->second].path();
}

std::vector<std::string> CheckpointTensors::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

}  // namespace llmq
