// Element types llmq stores and computes with, and their safetensors names.
// Sub-byte types (I4/U4) are always stored packed; bits() is the honest element size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmq {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E4M3,  // FP8 E4M3FN (safetensors "F8_E4M3", torch float8_e4m3fn)
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64,
  kI4,  // packed signed nibbles, never stored as a safetensors dtype of its own
};

int dtype_bits(DType t);
// Size of n elements in bytes; sub-byte totals round up to whole bytes.
int64_t dtype_nbytes(DType t, int64_t n);
std::string_view dtype_name(DType t);  // safetensors spelling, e.g. "BF16"
// Parses a safetensors dtype string; nullopt for strings llmq does not handle.
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

}  // namespace llmq
