#include "core/dtype.h"

#include <array>

#include "core/check.h"

namespace llmq {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  int bits;
  bool is_float;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kBool, "BOOL", 8, false},
    {DType::kU8, "U8", 8, false},
    {DType::kI8, "I8", 8, false},
    {DType::kF8E4M3, "F8_E4M3", 8, true},
    {DType::kI16, "I16", 16, false},
    {DType::kU16, "U16", 16, false},
    {DType::kF16, "F16", 16, true},
    {DType::kBF16, "BF16", 16, true},
    {DType::kI32, "I32", 32, false},
    {DType::kU32, "U32", 32, false},
    {DType::kF32, "F32", 32, true},
    {DType::kI64, "I64", 64, false},
    {DType::kU64, "U64", 64, false},
    {DType::kF64, "F64", 64, true},
    {DType::kI4, "I4", 4, false},
}};

const DTypeInfo& info(DType t) {
  for (const auto& i : kDTypes)
    if (i.type == t) return i;
  LLMQ_CHECK(false, "unknown dtype enum " << static_cast<int>(t));
}

}  // namespace

int dtype_bits(DType t) { return info(t).bits; }
int64_t dtype_nbytes(DType t, int64_t n) { return (n * dtype_bits(t) + 7) / 8; }
std::string_view dtype_name(DType t) { return info(t).name; }
bool dtype_is_float(DType t) { return info(t).is_float; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kDTypes)
    if (i.name == name && i.type != DType::kI4) return i.type;
  return std::nullopt;
}

}  // namespace llmq
