// The tensor-core and async-copy instructions the runner's kernels share (sm_80+):
// mma.sync m16n8k16 bf16 and m16n8k32 E4M3 (sm_89+) with f32 accumulation, m16n8k32 s8 with
// s32, ldmatrix, cp.async. PTX ISA fragment layouts
// (g = lane / 4, t = lane % 4): A a0..a3 = (row g, k 2t..2t+1), (row g + 8, k 2t..),
// (row g, k 2t + 8..), (row g + 8, k 2t + 8..); B b0 = (k 2t..2t+1, col g), b1 = (k 2t + 8..,
// col g); C c0, c1 = (row g, cols 2t, 2t + 1), c2, c3 = (row g + 8, ...).
#pragma once

#include <cstdint>

namespace llmq::gpu {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// d += A·B, A 16x16 bf16, B 16x8 bf16, d 16x8 f32.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d = A·B (no accumulator input), A 16x32 E4M3, B 32x8 E4M3, d 16x8 f32; sm_89+ (a trap
// below). Each register holds four consecutive k (g, t as above): a0 = (row g, k 4t..4t+3),
// a1 = (row g + 8, k 4t..), a2 = (row g, k 4t + 16..), a3 = (row g + 8, k 4t + 16..); b0 =
// (k 4t..4t+3, col g), b1 = (k 4t + 16.., col g); C as for mma_bf16. Products are exact, but
// Hopper adds them with about 14 mantissa bits aligned to the largest (tests/test_runner_kernels.cc
// gives the measured bound); callers add each result into an f32 sum themselves.
__device__ __forceinline__ void mma_fp8(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
#else
  (void)a, (void)b0, (void)b1;
  __trap();
  d[0] = d[1] = d[2] = d[3] = 0.0f;
#endif
}

// d += A·B, A 16x32 s8, B 32x8 s8, d 16x8 s32 (exact; sums wrap past 2^31, which K < 2^17
// codes of |c| <= 128 never reach). Fragments as mma_fp8's.
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row addresses of matrix
// i; lane l receives row l / 4, columns 2(l % 4), 2(l % 4) + 1 of each (transposed: the
// same of the transpose).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared, asynchronous (L2 only); zero-filled, src not read, when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared, asynchronous (through L1: .cg takes 16 bytes only).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's groups are pending (PTX takes an immediate).
template <int N>
__device__ __forceinline__ void cp_async_wait_n() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// The same for a run-time n in 0..3 (larger n waits as for 3).
__device__ __forceinline__ void cp_async_wait(int n) {
  switch (n) {
    case 0: return cp_async_wait_n<0>();
    case 1: return cp_async_wait_n<1>();
    case 2: return cp_async_wait_n<2>();
    default: return cp_async_wait_n<3>();
  }
}

}  // namespace llmq::gpu
