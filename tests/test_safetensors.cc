// safetensors reader/writer: canonical bytes, round trips, sharding, the real tiny models, and
// one handcrafted bad file per failure kind (each message must name the file and the problem).
#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "core/numeric.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

// Plain-gtest substitutes for gmock's HasSubstr / StartsWith (the tests link gtest only).
::testing::AssertionResult HasSub(const std::string& msg, const std::string& part) {
  if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << msg << "\" does not contain \"" << part << "\"";
}
::testing::AssertionResult Starts(const std::string& msg, const std::string& prefix) {
  if (msg.rfind(prefix, 0) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << msg << "\" does not start with \"" << prefix << "\"";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// [u64 header length][header][data_size bytes of 0xAB].
std::string st_bytes(const std::string& header, size_t data_size) {
  return u64_le(header.size()) + header + std::string(data_size, '\xAB');
}

Tensor random_tensor(DType dtype, Shape shape, std::mt19937* rng) {
  Tensor t(dtype, std::move(shape));
  auto* p = static_cast<uint8_t*>(t.raw());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>((*rng)() & 0xff);
  return t;
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.data, b.data, a.nbytes()) == 0);
}

// ---------------------------------------------------------------------------------------------
// Writer: exact bytes

TEST(SafetensorsWriter, HeaderBytesMatchHandDerivedLiteral) {
  SafetensorsWriter w;
  w.add("a", Tensor(DType::kBF16, {2, 3}));
  w.add("b", Tensor(DType::kF32, {}));  // 0-d scalar: 1 element, 4 bytes
  w.add("c", Tensor(DType::kI64, {1}));
  w.add("q\"x", Tensor(DType::kBF16, {0}));  // dimension 0: no bytes; name needs escaping
  // Order: I64 (8 B), F32 (4 B), then the BF16 tensors by name. 255 chars + 1 pad space.
  const std::string expected =
      R"({"__metadata__":{"format":"pt"},)"
      R"("c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"BF16","shape":[2,3],"data_offsets":[12,24]},)"
      R"("q\"x":{"dtype":"BF16","shape":[0],"data_offsets":[24,24]}} )";
  EXPECT_EQ(w.header_json(), expected);
  EXPECT_EQ(w.header_json().size(), 256u);
  EXPECT_EQ(w.payload_bytes(), 24u);

  const std::string dir = testing::scratch_dir("st_literal");
  const std::string path = dir + "/x.safetensors";
  ASSERT_TRUE(w.write(path).is_ok());
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), 8u + 256u + 24u);
  EXPECT_EQ(bytes.substr(0, 8), u64_le(256));
  EXPECT_EQ(bytes.substr(8, 256), expected);
}

TEST(SafetensorsWriter, EmptyWriterAndExtraMetadata) {
  SafetensorsWriter w;
  EXPECT_EQ(w.header_json(), R"({"__metadata__":{"format":"pt"}})");  // 32 chars, no padding
  w.set_metadata("gptq_bits", "4");
  // std::map order: "format" < "gptq_bits"; 48 chars, no padding.
  EXPECT_EQ(w.header_json(), R"({"__metadata__":{"format":"pt","gptq_bits":"4"}})");
  w.set_metadata("a\n", "x");
  EXPECT_EQ(w.header_json(), "{\"__metadata__\":{\"a\\n\":\"x\",\"format\":\"pt\",\"gptq_bits\":\"4\"}}      ");
}

TEST(SafetensorsWriter, DataStartAndEveryTensorAligned) {
  std::mt19937 rng(7);
  SafetensorsWriter w;
  // Odd sizes so a naive order (by name) would misalign the wider types.
  w.add("a.u8", random_tensor(DType::kU8, {3}, &rng));
  w.add("b.bf16", random_tensor(DType::kBF16, {5}, &rng));
  w.add("c.f32", random_tensor(DType::kF32, {3}, &rng));
  w.add("d.i64", random_tensor(DType::kI64, {1}, &rng));
  w.add("e.f16", random_tensor(DType::kF16, {1}, &rng));
  w.add("f.f64", random_tensor(DType::kF64, {2}, &rng));
  const std::string path = testing::scratch_dir("st_align") + "/a.safetensors";
  ASSERT_TRUE(w.write(path).is_ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.has_value()) << f.status().message();
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  ASSERT_EQ(f->entries().size(), 6u);
  for (const auto& e : f->entries()) {
    const uint64_t elem = static_cast<uint64_t>(dtype_bits(e.dtype) / 8);
    EXPECT_EQ((8 + n + e.begin) % elem, 0u) << e.name;
    auto v = f->view(e.name);
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % elem, 0u) << e.name;
  }
  // Descending element size: the 8-byte tensors come first.
  EXPECT_EQ(f->entries()[0].name, "d.i64");
  EXPECT_EQ(f->entries()[1].name, "f.f64");
  EXPECT_EQ(f->entries()[5].name, "a.u8");
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(SafetensorsRoundTrip, WriteReadWriteIsByteIdentical) {
  std::mt19937 rng(1234);
  SafetensorsWriter w1;
  w1.set_metadata("note", "round \"trip\" \xc3\xa9");
  w1.add("model.layers.0.mlp.down_proj.weight", random_tensor(DType::kBF16, {7, 5}, &rng));
  w1.add("scale", random_tensor(DType::kF32, {}, &rng));
  w1.add("zero", random_tensor(DType::kF16, {0, 4}, &rng));
  w1.add("codes", random_tensor(DType::kF8E4M3, {3, 3}, &rng));
  w1.add("ids", random_tensor(DType::kI64, {2}, &rng));
  w1.add("mask", random_tensor(DType::kBool, {5}, &rng));
  w1.add("q", random_tensor(DType::kI8, {11}, &rng));
  w1.add("packed", random_tensor(DType::kI32, {2, 2}, &rng));
  w1.add("\xe2\x9c\x93 unicode", random_tensor(DType::kU16, {3}, &rng));
  const std::string dir = testing::scratch_dir("st_roundtrip");
  ASSERT_TRUE(w1.write(dir + "/1.safetensors").is_ok());

  auto f = SafetensorsFile::open(dir + "/1.safetensors");
  ASSERT_TRUE(f.has_value()) << f.status().message();
  EXPECT_EQ(f->entries().size(), 9u);
  EXPECT_EQ(f->metadata().at("note"), "round \"trip\" \xc3\xa9");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  SafetensorsWriter w2;
  for (const auto& [k, v] : f->metadata()) w2.set_metadata(k, v);
  for (const auto& e : f->entries()) {
    auto v = f->view(e.name);
    ASSERT_TRUE(v.has_value());
    w2.add(e.name, *v);
  }
  ASSERT_TRUE(w2.write(dir + "/2.safetensors").is_ok());
  const std::string b1 = read_bytes(dir + "/1.safetensors");
  const std::string b2 = read_bytes(dir + "/2.safetensors");
  ASSERT_GT(b1.size(), 100u);
  EXPECT_EQ(b1, b2);

  auto scalar = f->view("scale");
  ASSERT_TRUE(scalar.has_value());
  EXPECT_EQ(scalar->rank(), 0);
  EXPECT_EQ(scalar->numel(), 1);
  auto zero = f->view("zero");
  ASSERT_TRUE(zero.has_value());
  EXPECT_EQ(zero->shape, (Shape{0, 4}));
  EXPECT_EQ(zero->nbytes(), 0);
}

TEST(SafetensorsRoundTrip, TinyStoriesFileIsReproducedExactly) {
  LLMQ_REQUIRE_TEST_DATA();
  // tinystories-656k was written by the reference writer with one dtype (BF16), so the
  // canonical order (element size, then name) and metadata order coincide with it.
  const std::string src = testing::test_data_dir() + "/models/tinystories-656k/model.safetensors";
  auto f = SafetensorsFile::open(src);
  ASSERT_TRUE(f.has_value()) << f.status().message();
  SafetensorsWriter w;
  for (const auto& [k, v] : f->metadata()) w.set_metadata(k, v);
  for (const auto& e : f->entries()) w.add(e.name, *f->view(e.name));
  const std::string out = testing::scratch_dir("st_tiny_rewrite") + "/model.safetensors";
  ASSERT_TRUE(w.write(out).is_ok());
  EXPECT_EQ(read_bytes(out), read_bytes(src));
}

// ---------------------------------------------------------------------------------------------
// Reading the real tiny models

TEST(SafetensorsRead, Stories260k) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string path = testing::test_data_dir() + "/models/stories260k/model.safetensors";
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.has_value()) << f.status().message();
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  // embed + 5 layers x 9 + final norm; tied, so no lm_head.
  EXPECT_EQ(f->entries().size(), 1u + 5u * 9u + 1u);
  EXPECT_FALSE(f->contains("lm_head.weight"));
  // entries() keeps header order: the file starts with the embedding, then layer 0's norm.
  EXPECT_EQ(f->entries()[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(f->entries()[1].name, "model.layers.0.input_layernorm.weight");
  const SafetensorsEntry* q = f->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::kBF16);
  EXPECT_EQ(q->shape, (Shape{64, 64}));
  EXPECT_EQ(q->begin, 65664u);
  EXPECT_EQ(q->end, 73856u);
  const SafetensorsEntry* k = f->find("model.layers.4.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (Shape{32, 64}));
  // RMSNorm weights of a trained model: finite, non-zero, not all equal.
  auto norm = f->view("model.norm.weight");
  ASSERT_TRUE(norm.has_value());
  Tensor n32 = to_f32(*norm);
  float lo = 1e30f, hi = -1e30f;
  for (int64_t i = 0; i < n32.numel(); ++i) {
    const float x = n32.data<float>()[i];
    ASSERT_TRUE(std::isfinite(x));
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  EXPECT_LT(lo, hi);
  EXPECT_GT(hi, 0.0f);
  EXPECT_FALSE(f->view("nope").has_value());
  EXPECT_TRUE(HasSub(f->view("nope").status().message(), "nope"));
}

TEST(SafetensorsRead, TinyStories656kMetadataAlias) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string path = testing::test_data_dir() + "/models/tinystories-656k/model.safetensors";
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.has_value()) << f.status().message();
  EXPECT_EQ(f->entries().size(), 1u + 2u * 9u + 1u);
  EXPECT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata().at("model.embed_tokens.weight"), "lm_head.weight");
  EXPECT_FALSE(f->contains("model.embed_tokens.weight"));
  const SafetensorsEntry* head = f->find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->shape, (Shape{2048, 128}));
  EXPECT_EQ(head->begin, 0u);
  EXPECT_EQ(head->end, 524288u);
}

// ---------------------------------------------------------------------------------------------
// Valid edge cases the reader must accept

TEST(SafetensorsRead, AcceptsEmptyDataBufferAndUnpaddedHeader) {
  const std::string dir = testing::scratch_dir("st_edge");
  write_bytes(dir + "/empty.safetensors", st_bytes("{}", 0));  // N = 2: not a multiple of 8
  auto f = SafetensorsFile::open(dir + "/empty.safetensors");
  ASSERT_TRUE(f.has_value()) << f.status().message();
  EXPECT_TRUE(f->entries().empty());
  EXPECT_TRUE(f->metadata().empty());

  // Zero-size tensors may sit anywhere; padding spaces after the JSON are fine.
  write_bytes(dir + "/zero.safetensors",
              st_bytes(R"({"z":{"dtype":"F32","shape":[4,0],"data_offsets":[0,0]},)"
                       R"("s":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}   )",
                       1));
  auto g = SafetensorsFile::open(dir + "/zero.safetensors");
  ASSERT_TRUE(g.has_value()) << g.status().message();
  ASSERT_EQ(g->entries().size(), 2u);
  EXPECT_EQ(g->entries()[0].name, "z");  // header order kept
  EXPECT_EQ(g->find("s")->shape, Shape{});
}

// ---------------------------------------------------------------------------------------------
// One handcrafted bad file per failure kind

struct BadCase {
  const char* name;
  std::string bytes;
  const char* problem;  // must appear in the message
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b,
                  uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

TEST(SafetensorsRead, RejectsEachBadFileWithFileAndProblemNamed) {
  const std::vector<BadCase> cases = {
      {"truncated", std::string("\x10\x00\x00", 3), "truncated: file is 3 bytes"},
      {"header_past_eof", u64_le(100) + "{}", "header length 100 runs past the end of the file (10 bytes)"},
      {"header_too_big", u64_le(100'000'001) + "{}", "header length 100000001 exceeds the limit of 100000000"},
      {"invalid_json", st_bytes(R"({"a":)", 0), "invalid JSON header"},
      {"not_object", st_bytes("[1,2]", 0), "header is not a JSON object"},
      {"leading_space", st_bytes(" {}", 0), "header does not start with '{'"},
      {"unknown_dtype", st_bytes("{" + entry("w", "F7", "[2]", 0, 2) + "}", 2), "tensor 'w' has unknown dtype 'F7'"},
      {"size_mismatch", st_bytes("{" + entry("w", "F32", "[2,2]", 0, 8) + "}", 8),
       "tensor 'w' data_offsets [0, 8] do not match dtype F32 shape [2, 2] (16 bytes)"},
      {"overlap",
       st_bytes("{" + entry("a", "U8", "[8]", 0, 8) + "," + entry("b", "U8", "[8]", 4, 12) + "}", 12),
       "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
      {"hole", st_bytes("{" + entry("a", "U8", "[4]", 0, 4) + "," + entry("b", "U8", "[4]", 8, 12) + "}", 12),
       "hole of 4 bytes before tensor 'b' [8, 12]"},
      {"hole_at_start", st_bytes("{" + entry("a", "U8", "[4]", 4, 8) + "}", 8), "hole of 4 bytes before tensor 'a'"},
      {"past_end", st_bytes("{" + entry("a", "U8", "[16]", 0, 16) + "}", 8),
       "tensor 'a' data_offsets [0, 16] extend past the end of the data buffer (8 bytes)"},
      {"trailing", st_bytes("{" + entry("a", "U8", "[4]", 0, 4) + "}", 8), "4 trailing bytes after the last tensor"},
      {"trailing_no_tensors", st_bytes("{}", 3), "3 trailing bytes"},
      {"duplicate", st_bytes("{" + entry("a", "U8", "[4]", 0, 4) + "," + entry("a", "U8", "[4]", 4, 8) + "}", 8),
       "duplicate key 'a'"},
      {"negative_dim", st_bytes("{" + entry("a", "U8", "[-1,4]", 0, 4) + "}", 4), "tensor 'a' has negative dimension -1"},
      {"numel_overflow", st_bytes("{" + entry("a", "U8", "[4294967296,4294967296,0]", 0, 0) + "}", 0),
       "tensor 'a' shape [4294967296,4294967296,0] has too many elements"},
      {"bytes_overflow", st_bytes("{" + entry("a", "F64", "[4611686018427387904]", 0, 0) + "}", 0),
       "is not a whole number of bytes"},
      {"float_dim", st_bytes("{" + entry("a", "U8", "[4.5]", 0, 4) + "}", 4), "non-integer dimension 4.5"},
      {"end_before_begin", st_bytes("{" + entry("a", "U8", "[0]", 4, 0) + "}", 4), "[4, 0] end before begin"},
      {"metadata_non_string", st_bytes(R"({"__metadata__":{"format":"pt","x":1}})", 0),
       "__metadata__ value of 'x' is not a string"},
      {"metadata_not_object", st_bytes(R"({"__metadata__":"pt"})", 0), "__metadata__ is not a JSON object"},
      {"entry_not_object", st_bytes(R"({"a":[1]})", 0), "tensor 'a' is not a JSON object"},
      {"missing_offsets", st_bytes(R"({"a":{"dtype":"U8","shape":[0]}})", 0), "needs the keys"},
      {"unknown_key", st_bytes(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":1}})", 0),
       "tensor 'a' has unknown key 'x'"},
      {"bad_offsets", st_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", 1),
       "is not [begin, end]"},
      {"invalid_utf8", st_bytes("{\"\xff\":{}}", 0), "invalid JSON header"},
  };
  const std::string dir = testing::scratch_dir("st_bad");
  std::set<std::string> seen;
  for (const BadCase& c : cases) {
    ASSERT_TRUE(seen.insert(c.name).second) << c.name;
    const std::string path = dir + "/" + c.name + ".safetensors";
    write_bytes(path, c.bytes);
    auto f = SafetensorsFile::open(path);
    ASSERT_FALSE(f.has_value()) << c.name << " was accepted";
    const std::string msg = f.status().message();
    EXPECT_TRUE(Starts(msg, path + ": ")) << c.name;
    EXPECT_TRUE(HasSub(msg, c.problem)) << c.name;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << c.name << ": " << msg;
  }
}

TEST(SafetensorsParseHeader, NamesOriginAndFillsMetadata) {
  std::map<std::string, std::string> md;
  const std::string h = R"({"__metadata__":{"format":"pt"},)" + entry("w", "BF16", "[2]", 0, 4) + "}";
  auto ok = SafetensorsFile::parse_header("mem", h.data(), h.size(), 4, &md);
  ASSERT_TRUE(ok.has_value()) << ok.status().message();
  ASSERT_EQ(ok->size(), 1u);
  EXPECT_EQ((*ok)[0].dtype, DType::kBF16);
  EXPECT_EQ(md.at("format"), "pt");
  auto bad = SafetensorsFile::parse_header("mem", h.data(), h.size(), 6, &md);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.status().message(),
            "mem: 2 trailing bytes after the last tensor (data buffer 6 bytes, tensors end at 4)");
  auto empty = SafetensorsFile::parse_header("mem", "", 0, 0, nullptr);
  ASSERT_FALSE(empty.has_value());
  EXPECT_TRUE(Starts(empty.status().message(), "mem: invalid JSON header"));
}

TEST(SafetensorsRead, MissingFileNamesPath) {
  const std::string path = testing::scratch_dir("st_missing") + "/none.safetensors";
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.has_value());
  EXPECT_TRUE(Starts(f.status().message(), path + ": cannot open"));
}

// ---------------------------------------------------------------------------------------------
// Sharding

std::vector<std::string> dir_listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(ShardedCheckpointWriter, SplitPointsIndexAndTotalSize) {
  std::mt19937 rng(99);
  const std::string dir = testing::scratch_dir("st_shards");
  ShardedCheckpointWriter w(dir, 100);
  // Payload bytes: t0 40, t1 60 (exactly fills 100: stays), t2 40 (would make 140: new shard),
  // t3 150 (over the limit: a shard of its own), t4 10 (new shard), t5 10.
  std::map<std::string, Tensor> ref;
  auto add = [&](const std::string& name, DType dt, Shape shape) {
    Tensor t = random_tensor(dt, std::move(shape), &rng);
    ref.emplace(name, Tensor::copy_of(t.view()));
    ASSERT_TRUE(w.add(name, std::move(t)).is_ok()) << name;
  };
  // Shard files so far, and whether the open shard's bytes are in its spill file (not memory).
  const auto shards = [&] {
    size_t n = 0;
    for (const std::string& f : dir_listing(dir)) n += f.find(".data.tmp") == std::string::npos;
    return n;
  };
  const auto spilled = [&] {
    for (const std::string& f : dir_listing(dir))
      if (f.find(".data.tmp") != std::string::npos) return std::filesystem::file_size(dir + "/" + f);
    return std::uintmax_t{0};
  };
  add("t0", DType::kF32, {10});
  add("t1", DType::kBF16, {30});
  EXPECT_EQ(shards(), 0u);  // first shard still open...
  EXPECT_EQ(spilled(), 100u);  // ...its tensors already on disk
  add("t2", DType::kU8, {40});
  EXPECT_EQ(shards(), 1u);  // first shard written as soon as it closed
  EXPECT_EQ(spilled(), 40u);
  add("t3", DType::kU8, {150});
  add("t4", DType::kU8, {10});
  EXPECT_EQ(shards(), 3u);
  ASSERT_TRUE(w.add("t5", ref.at("t4").view()).is_ok());
  ref.emplace("t5", Tensor::copy_of(ref.at("t4").view()));
  const Status dup = w.add("t0", ref.at("t0").view());
  ASSERT_FALSE(dup.is_ok());
  EXPECT_TRUE(HasSub(dup.message(), "tensor 't0' written twice"));
  ASSERT_TRUE(w.finish().is_ok());

  EXPECT_EQ(dir_listing(dir), (std::vector<std::string>{
                                  "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                  "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                  "model.safetensors.index.json"}));
  const std::string expected_index = R"({
  "metadata": {
    "total_size": 310
  },
  "weight_map": {
    "t0": "model-00001-of-00004.safetensors",
    "t1": "model-00001-of-00004.safetensors",
    "t2": "model-00002-of-00004.safetensors",
    "t3": "model-00003-of-00004.safetensors",
    "t4": "model-00004-of-00004.safetensors",
    "t5": "model-00004-of-00004.safetensors"
  }
}
)";
  EXPECT_EQ(read_bytes(dir + "/model.safetensors.index.json"), expected_index);

  const std::vector<std::vector<std::string>> shard_names = {{"t0", "t1"}, {"t2"}, {"t3"}, {"t4", "t5"}};
  for (size_t i = 0; i < shard_names.size(); ++i) {
    auto f = SafetensorsFile::open(dir + "/model-0000" + std::to_string(i + 1) + "-of-00004.safetensors");
    ASSERT_TRUE(f.has_value()) << f.status().message();
    EXPECT_EQ(f->metadata().at("format"), "pt");
    ASSERT_EQ(f->entries().size(), shard_names[i].size());
    for (const auto& n : shard_names[i]) EXPECT_TRUE(f->contains(n)) << n << " in shard " << i + 1;
  }

  auto ct = CheckpointTensors::open(dir);
  ASSERT_TRUE(ct.has_value()) << ct.status().message();
  EXPECT_EQ(ct->names(), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4", "t5"}));
  EXPECT_EQ(ct->files().size(), 4u);
  EXPECT_EQ(ct->file_of("t3"), dir + "/model-00003-of-00004.safetensors");
  for (const auto& [name, t] : ref) {
    auto v = ct->view(name);
    ASSERT_TRUE(v.has_value()) << name;
    EXPECT_TRUE(same_bytes(*v, t.view())) << name;
  }
}

// A writer dropped before finish (an error mid-run) removes its spill file.
TEST(ShardedCheckpointWriter, AbandonedWriterLeavesNoSpillFile) {
  std::mt19937 rng(7);
  const std::string dir = testing::scratch_dir("st_spill");
  {
    ShardedCheckpointWriter w(dir, 1000);
    ASSERT_TRUE(w.add("a", random_tensor(DType::kF32, {10}, &rng)).is_ok());
    EXPECT_EQ(dir_listing(dir).size(), 1u);  // the spill file
  }
  EXPECT_TRUE(dir_listing(dir).empty());
}

TEST(ShardedCheckpointWriter, OneShardIsModelSafetensorsWithoutIndex) {
  std::mt19937 rng(5);
  const std::string dir = testing::scratch_dir("st_one_shard");
  ShardedCheckpointWriter w(dir, 1000);
  Tensor a = random_tensor(DType::kBF16, {4, 4}, &rng);
  ASSERT_TRUE(w.add("b", a.view()).is_ok());
  ASSERT_TRUE(w.add("a", random_tensor(DType::kF32, {2}, &rng)).is_ok());
  ASSERT_TRUE(w.finish().is_ok());
  EXPECT_EQ(dir_listing(dir), std::vector<std::string>{"model.safetensors"});
  auto ct = CheckpointTensors::open(dir);
  ASSERT_TRUE(ct.has_value()) << ct.status().message();
  EXPECT_EQ(ct->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(same_bytes(*ct->view("b"), a.view()));
  EXPECT_EQ(ct->file_of("a"), dir + "/model.safetensors");
}

TEST(CheckpointTensors, IndexErrorsNameIndexAndProblem) {
  const std::string dir = testing::scratch_dir("st_index_bad");
  SafetensorsWriter w;
  w.add("a", Tensor(DType::kF32, {2}));
  ASSERT_TRUE(w.write(dir + "/model-00001-of-00002.safetensors").is_ok());
  const std::string index = dir + "/model.safetensors.index.json";

  write_bytes(index, R"({"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
                     R"("b":"model-00002-of-00002.safetensors"}})");
  auto missing = CheckpointTensors::open(dir);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().message(),
            index + ": shard 'model-00002-of-00002.safetensors' listed in weight_map does not exist");

  write_bytes(index, R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}})");
  auto absent = CheckpointTensors::open(dir);
  ASSERT_FALSE(absent.has_value());
  EXPECT_TRUE(Starts(absent.status().message(), index + ": tensor 'c' is mapped to"));

  write_bytes(index, R"({"weight_map":{"a":"../model-00001-of-00002.safetensors"}})");
  auto escape = CheckpointTensors::open(dir);
  ASSERT_FALSE(escape.has_value());
  EXPECT_TRUE(HasSub(escape.status().message(), "is not a plain file name"));

  write_bytes(index, R"({"metadata":{}})");
  auto no_map = CheckpointTensors::open(dir);
  ASSERT_FALSE(no_map.has_value());
  EXPECT_EQ(no_map.status().message(), index + ": no \"weight_map\" object");

  fs::remove(index);
  fs::remove(dir + "/model-00001-of-00002.safetensors");
  auto none = CheckpointTensors::open(dir);
  ASSERT_FALSE(none.has_value());
  EXPECT_TRUE(Starts(none.status().message(), dir + ": no model.safetensors"));
}

}  // namespace
}  // namespace llmq
