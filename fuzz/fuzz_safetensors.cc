// libFuzzer target for the safetensors reader. Input bytes are a whole in-memory file:
// [u64 N][header][data], split exactly as SafetensorsFile::open splits a mapped file. When the
// parse succeeds, the canonical writer must reproduce the same tensors and metadata: its
// header, parsed against its payload size, has to validate and agree (a reader/writer
// round-trip property, not only "does not crash").
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "formats/safetensors.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using llmq::SafetensorsFile;
  // Raw header bytes with a data buffer of arbitrary claimed size (header-only path).
  {
    std::map<std::string, std::string> md;
    const uint64_t claimed = size > 0 ? data[0] : 0;
    (void)SafetensorsFile::parse_header("fuzz", reinterpret_cast<const char*>(data), size, claimed, &md);
  }
  if (size < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > llmq::kSafetensorsMaxHeader || n > size - 8) return 0;
  const uint8_t* buffer = data + 8 + n;
  const uint64_t data_size = size - 8 - n;
  std::map<std::string, std::string> md;
  auto entries = SafetensorsFile::parse_header("fuzz", reinterpret_cast<const char*>(data + 8), n, data_size, &md);
  if (!entries.has_value()) {
    check(!entries.status().message().empty() && entries.status().message().find('\n') == std::string::npos);
    return 0;
  }

  llmq::SafetensorsWriter w;
  for (const auto& [k, v] : md) w.set_metadata(k, v);
  for (const auto& e : *entries) {
    check(e.end <= data_size && e.begin <= e.end);
    llmq::TensorView v(e.dtype, e.shape, const_cast<uint8_t*>(buffer + e.begin));
    check(static_cast<uint64_t>(v.nbytes()) == e.end - e.begin);
    w.add(e.name, v);
  }
  check(w.payload_bytes() == data_size);
  const std::string header = w.header_json();
  check(header.size() % 8 == 0);
  std::map<std::string, std::string> md2;
  auto again = SafetensorsFile::parse_header("rewrite", header.data(), header.size(), data_size, &md2);
  check(again.has_value());
  check(again->size() == entries->size());
  std::map<std::string, const llmq::SafetensorsEntry*> by_name;
  for (const auto& e : *again) by_name[e.name] = &e;
  for (const auto& e : *entries) {
    const auto it = by_name.find(e.name);
    check(it != by_name.end() && it->second->dtype == e.dtype && it->second->shape == e.shape);
  }
  md.emplace("format", "pt");  // the writer always records a format
  check(md2 == md);
  return 0;
}
