// safetensors reader and writer (formats.md section 1.4 and 1.5).
//
// File = [u64 N little-endian][N bytes JSON header, space padded][data buffer].
// Header: {"__metadata__": {str: str}, "name": {"dtype": "BF16", "shape": [..],
//          "data_offsets": [begin, end]}, ...}; offsets relative to the data buffer.
// The reader memory-maps the file and validates everything against the bytes present:
// header length within the file and <= 100 MB, valid JSON object, known dtype strings,
// non-negative shapes, end - begin == numel * element size, entries sorted by offset tile the
// buffer exactly from 0 (no holes, no overlap), file size == 8 + N + last end, no duplicates.
// Each violation yields a one-line Status naming the file and the problem.
//
// The writer is canonical: compact JSON with "__metadata__" first ({"format":"pt"} plus any
// extra keys), tensors ordered by descending element size then name (keeps every tensor
// naturally aligned), header padded with spaces to a multiple of 8. write -> read -> write is
// byte-identical.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace llmq {

constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;  // offsets relative to the data buffer
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  static Expected<SafetensorsFile> open(const std::string& path);
  // Parses and validates a header against a data buffer of data_size bytes (no file needed;
  // the fuzz target and tests drive this directly). `origin` names the source in messages.
  static Expected<std::vector<SafetensorsEntry>> parse_header(const std::string& origin,
                                                              const char* header, size_t header_len,
                                                              uint64_t data_size,
                                                              std::map<std::string, std::string>* metadata);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const SafetensorsEntry* find(const std::string& name) const;
  // View into the mapped bytes (read-only in spirit; valid while this object lives).
  Expected<TensorView> view(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  const uint8_t* map_ = nullptr;  // whole file
  size_t map_size_ = 0;
  uint64_t data_start_ = 0;
};

// Collects tensors and writes one canonical file. A tensor is held in memory, or "spilled":
// its bytes already sit in a side file the caller wrote (ShardedCheckpointWriter,
// CalibrationWriter, to keep memory bounded), and write() copies them from there, giving each
// copied range's disk space back (the spill file is scratch: its contents are gone after).
class SafetensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Copies the bytes of a contiguous host view.
  void add(const std::string& name, const TensorView& v);
  void add(const std::string& name, Tensor&& t);
  // A tensor of dtype/shape whose bytes are at `offset` of the spill file given to write().
  void add_spilled(const std::string& name, DType dtype, const Shape& shape, uint64_t offset);
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  size_t size() const { return tensors_.size(); }
  uint64_t payload_bytes() const;
  std::string header_json() const;        // the padded header, without the 8-byte length
  // Plain write (caller stages the directory); spill_path: the file of add_spilled's bytes.
  Status write(const std::string& path, const std::string& spill_path = "") const;

  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t nbytes = 0;
    Tensor data;                // in memory, or empty when spilled
    uint64_t spill_offset = 0;  // spilled: where the bytes are
  };

 private:
  static void check_name(const std::string& name, DType dtype);
  std::map<std::string, std::string> metadata_ = {{"format", "pt"}};
  std::map<std::string, Entry> tensors_;
};

// Writes a model's tensors as HF does: one `model.safetensors` when everything fits in one
// shard, else `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`
// ({"metadata":{"total_size":T},"weight_map":{name: file}}; T = sum of payload bytes).
// Tensors are assigned to shards in the order they are added (a new shard starts when the
// next tensor would push the shard past max_shard_bytes). Each tensor's bytes go to the
// shard's spill file as soon as it is added (so memory holds no shard, only names and
// shapes); when the shard closes, its file is written in canonical order from the spill file
// (copy_file_range: an in-kernel copy) and the spill file removed.
class ShardedCheckpointWriter {
 public:
  ShardedCheckpointWriter(std::string dir, uint64_t max_shard_bytes);
  ~ShardedCheckpointWriter();
  ShardedCheckpointWriter(ShardedCheckpointWriter&& o) noexcept;
  ShardedCheckpointWriter& operator=(ShardedCheckpointWriter&&) = delete;
  Status add(const std::string& name, Tensor&& t);
  Status add(const std::string& name, const TensorView& v);
  // Flushes the last shard, renames shards to their final "-of-N" names, writes the index.
  Status finish();

 private:
  Status flush_shard();
  std::string spill_path() const;
  std::string dir_;
  uint64_t max_shard_bytes_;
  SafetensorsWriter current_;
  int spill_fd_ = -1;       // the current shard's spill file, open while it has tensors
  uint64_t spill_size_ = 0;
  std::vector<std::string> shard_tmp_names_;
  std::map<std::string, size_t> weight_shard_;  // tensor name -> shard index
  uint64_t total_size_ = 0;
  bool finished_ = false;
};

// Drops the resident pages of a mapped tensor's bytes from this process (madvise DONTNEED on
// the read-only mapping; the page cache keeps them, a later read faults them back in). The
// streaming readers call it once a tensor has been converted, so resident memory stays about
// one layer instead of growing with every shard read. No-op for memory that is not mapped.
void release_mapped_pages(const void* data, size_t bytes);

// Every tensor of a checkpoint directory: through model.safetensors.index.json when present
// (each listed shard validated and every indexed name checked to exist there), else the single
// model.safetensors.
class CheckpointTensors {
 public:
  static Expected<CheckpointTensors> open(const std::string& dir);
  bool contains(const std::string& name) const;
  const SafetensorsEntry* find(const std::string& name) const;
  Expected<TensorView> view(const std::string& name) const;
  // Name of the file that holds a tensor, for error messages.
  std::string file_of(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
};

}  // namespace llmq
