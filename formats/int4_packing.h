// INT4 nibble packing for the three on-disk layouts llmq writes (formats.md B.3, C.2, C.5),
// written once for host and device (nvcc compiles this header too).
//
// A 32-bit word holds 8 nibbles; nibble i sits in bits [4i, 4i+3] (nibble 0 least significant).
//   sequential (GPTQ qweight/qzeros, compressed-tensors weight_packed/weight_zero_point):
//       nibble i = element 8c + i.                       1..8 -> 0x87654321
//   AWQ interleave (AutoAWQ GEMM qweight/qzeros): nibble i = element 8c + awq_order(i),
//       awq_order = {0, 2, 4, 6, 1, 3, 5, 7}.            1..8 -> 0x86427531
// Tensor-level layouts (q = unsigned code 0..15, out x in logical weight, G = in / group):
//   AWQ   qweight [in, out/8]  packed along out, interleaved;  qzeros [G, out/8] same.
//   GPTQ  qweight [in/8, out]  packed along in, sequential;     qzeros [G, out/8] sequential,
//         v1 stores zero - 1 (a true zero of 0 is not representable, see C.3).
//   CT    weight_packed [out, in/8] sequential of (signed q + 8);  weight_zero_point
//         [out/8, G] sequential along out of (signed zp + 8).
#pragma once

#include <cstdint>

#include "core/numeric.h"  // LLMQ_HD

namespace llmq {

constexpr int kNibblesPerWord = 8;
// AWQ: nibble i of a word holds element awq_order(i) = {0,2,4,6,1,3,5,7}[i]; element j sits
// in nibble awq_reverse(j) = {0,4,1,5,2,6,3,7}[j]. Functions, not tables, so device code can
// index them without a __device__ copy.
LLMQ_HD int awq_order(int i) { return i < 4 ? 2 * i : 2 * (i - 4) + 1; }
LLMQ_HD int awq_reverse(int j) { return (j & 1) ? 4 + (j >> 1) : (j >> 1); }

// v[j] = element 8c + j (values 0..15; higher bits are masked off).
LLMQ_HD uint32_t pack_nibbles_sequential(const uint8_t v[8]) {
  uint32_t w = 0;
  for (int i = 0; i < 8; ++i) w |= static_cast<uint32_t>(v[i] & 0xFu) << (4 * i);
  return w;
}

LLMQ_HD uint32_t pack_nibbles_awq(const uint8_t v[8]) {
  uint32_t w = 0;
  for (int i = 0; i < 8; ++i) w |= static_cast<uint32_t>(v[awq_order(i)] & 0xFu) << (4 * i);
  return w;
}

// Element j (0..7) of a word.
LLMQ_HD uint8_t unpack_nibble_sequential(uint32_t w, int j) { return static_cast<uint8_t>((w >> (4 * j)) & 0xFu); }
LLMQ_HD uint8_t unpack_nibble_awq(uint32_t w, int j) {
  return static_cast<uint8_t>((w >> (4 * awq_reverse(j))) & 0xFu);
}

// All eight elements of a sequential word at once, element j in byte j of the result (bits
// 8j..8j+3): a little-endian store of it writes the eight codes in order. Three shift-or-mask
// steps move nibble halves apart: 16-bit halves to 32-bit lanes, bytes to 16-bit lanes,
// nibbles to bytes.
LLMQ_HD uint64_t spread_nibbles_sequential(uint32_t w) {
  uint64_t v = w;
  v = (v | (v << 16)) & 0x0000FFFF0000FFFFull;
  v = (v | (v << 8)) & 0x00FF00FF00FF00FFull;
  return (v | (v << 4)) & 0x0F0F0F0F0F0F0F0Full;
}

}  // namespace llmq
