// Causal GQA attention over the BF16 KV cache (kernels.h), two ways:
//  - split (decode; a workspace is given and the call has at most 8 * workspace_rows rows):
//    flash-decoding over position chunks: two kernels per group of rows, one when a chunk
//    covers the capacity, or one of thread-block clusters at small batches (see "split over
//    position chunks" below); made to stream K and V at HBM bandwidth.
//  - one block per (token row, kv head), for calls without a workspace or with more rows:
//    prefill-shaped calls the tensor-core kernel (attention_prefill.h) does not take (tiny
//    head dims, short spans).
// Both compute the G = n_q / n_kv query heads that share a kv head together, so each K/V row
// is read once for all of them, and both round as model/llama.cc's flash-SDPA emulation:
// f32 scores, the global row max first, p = bf16(exp(s - max)), the rowsum of the unrounded
// exp, P·V in f32, times 1/rowsum, bf16 out.
//
// One-block kernel: scores for all visible positions live in shared memory (so the cache
// capacity is bounded by attention_max_capacity), and P·V is split over position slices
// that are summed at the end. Each K/V row is read as 16-byte chunks of 8 bf16: hd/8 lanes
// cover one row, and the lane groups of a warp cover consecutive rows, so loads are coalesced
// for any hd in 8..256. It re-reads K/V per query row (O(T^2) L2 traffic, CUDA cores).
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include <cooperative_groups.h>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/kernels.h"
#include "runner/mma.cuh"
#include "runner/pdl.cuh"
#include "runner/split_arrival.cuh"

namespace llmq::gpu {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;

__device__ __forceinline__ float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

__device__ __forceinline__ void unpack8(const uint4& u, float* out) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
  }
}

// dot[g] = q_g · K[j] for the G heads of a kv head, position j (valid or not: every lane
// of the warp must call it, for the shuffles). Lane c of the `lanes` = hd/8 lanes of a row
// reads K[j] chunk c; the row's lanes are summed with shuffles.
template <int G>
__device__ __forceinline__ void score_row(const float* q, const bf16* k_row, bool valid, int hd, int c, int lanes,
                                          float (&dot)[G]) {
  for (int g = 0; g < G; ++g) dot[g] = 0.0f;
  if (valid) {
    float k8[8];
    unpack8(*reinterpret_cast<const uint4*>(k_row + c * 8), k8);
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 8; ++i) dot[g] += q[g * hd + c * 8 + i] * k8[i];
  }
  for (int o = lanes / 2; o > 0; o >>= 1)
    for (int g = 0; g < G; ++g) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], o);
}

__device__ float block_reduce(float v, float* shared, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = shared[0];
  for (int i = 1; i < kThreads / 32; ++i) total = is_max ? fmaxf(total, shared[i]) : total + shared[i];
  __syncthreads();
  return total;
}

// P·V for the G heads of a kv head over positions 0..n-1 of v (rows kv_dim apart), shared by
// the one-block and the split kernels: lane group `slice` accumulates positions slice,
// slice + slices, ... weighted by prob(g, j) (the bf16-rounded numerators); the slices'
// partial sums meet in shared memory `partial` [slices, G, hd] and are added in slice order
// (deterministic); store(i, o) receives the sum for element i = g * hd + d.
template <int G, class Prob, class Store>
__device__ __forceinline__ void pv_slices(const bf16* v, int kv_dim, int n, int hd, Prob prob, float* partial,
                                          Store store) {
  const int chunks = hd / 8, slices = kThreads / chunks;
  const int c = threadIdx.x % chunks, slice = threadIdx.x / chunks;
  float acc[G][8];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  for (int j = slice; j < n; j += slices) {
    float v8[8];
    unpack8(*reinterpret_cast<const uint4*>(v + static_cast<int64_t>(j) * kv_dim + c * 8), v8);
    for (int g = 0; g < G; ++g) {
      const float p = prob(g, j);
      for (int i = 0; i < 8; ++i) acc[g][i] += p * v8[i];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 8; ++i) partial[(slice * G + g) * hd + c * 8 + i] = acc[g][i];
  __syncthreads();
  for (int i = threadIdx.x; i < G * hd; i += kThreads) {
    float o = 0.0f;
    for (int sl = 0; sl < slices; ++sl) o += partial[sl * G * hd + i];
    store(i, o);
  }
}

// Shared memory: q [G, hd] | scores [G, capacity] | partial [slices, G, hd] (f32).
template <int G>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a) {
  pdl_wait();
  extern __shared__ float smem[];
  __shared__ float reduce[32];
  __shared__ float inv_sum[G];
  const int r = blockIdx.x, kvh = blockIdx.y;
  const int hd = a.hd, chunks = hd / 8, slices = kThreads / chunks;
  const int L = a.pos[r] + 1;
  const int kv_dim = a.n_kv * hd;
  // head_dim**-0.5 rounded once from double, as the reference's pow(hd, -0.5).
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(hd)));
  float* q = smem;
  float* scores = q + G * hd;
  float* partial = scores + G * a.capacity;

  for (int i = threadIdx.x; i < G * hd; i += kThreads)
    q[i] = bf16_to_f32(a.q[static_cast<int64_t>(r) * a.q_stride + (kvh * G) * hd + i]);
  __syncthreads();

  const int64_t base = static_cast<int64_t>(a.seq[r]) * a.capacity * kv_dim + kvh * hd;
  const int c = threadIdx.x % chunks, slice = threadIdx.x / chunks;
  // Scores: lane group `slice` takes positions slice, slice + slices, ...
  for (int j0 = 0; j0 < L; j0 += slices) {
    const int j = j0 + slice;
    float dot[G];
    score_row<G>(q, a.k_cache + base + static_cast<int64_t>(j) * kv_dim, j < L, hd, c, chunks, dot);
    if (j < L && c == 0)
      for (int g = 0; g < G; ++g) scores[g * a.capacity + j] = dot[g] * scale;
  }
  __syncthreads();

  // Softmax numerators exp(s - max), rounded to bf16 for P·V; the f32 sum normalises.
  for (int g = 0; g < G; ++g) {
    float* s = scores + g * a.capacity;
    float m = -FLT_MAX;
    for (int j = threadIdx.x; j < L; j += kThreads) m = fmaxf(m, s[j]);
    m = block_reduce(m, reduce, true);
    float l = 0.0f;
    for (int j = threadIdx.x; j < L; j += kThreads) {
      const float e = expf(s[j] - m);
      l += e;
      s[j] = round_bf16(e);
    }
    l = block_reduce(l, reduce, false);
    if (threadIdx.x == 0) inv_sum[g] = 1.0f / l;
  }
  __syncthreads();

  bf16* out = a.out + static_cast<int64_t>(r) * a.n_q * hd + (kvh * G) * hd;
  pv_slices<G>(
      a.v_cache + base, kv_dim, L, hd, [&](int g, int j) { return scores[g * a.capacity + j]; }, partial,
      [&](int i, float o) { out[i] = f32_to_bf16(o * inv_sum[i / hd]); });
}

size_t smem_bytes(int G, int hd, int capacity) {
  const int slices = kThreads / (hd / 8);
  return sizeof(float) * (static_cast<size_t>(G) * hd + static_cast<size_t>(G) * capacity +
                          static_cast<size_t>(slices) * G * hd);
}

int max_dynamic_smem() {
  return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin) - 1024;  // the static reduce / inv_sum arrays
}

bool supported_head_dim(int hd) { return hd % 8 == 0 && hd >= 8 && hd <= 256 && ((hd / 8) & (hd / 8 - 1)) == 0; }

template <int G>
void launch(const AttentionArgs& a, cudaStream_t s) {
  const size_t bytes = smem_bytes(G, a.hd, a.capacity);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  launch_pdl(attention_kernel<G>, dim3(a.rows, a.n_kv), dim3(kThreads), bytes, s, a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// ---- split over position chunks (decode) ------------------------------------------------
// Flash-decoding with the exact two-pass softmax: the grid is (chunk, kv head, row), and
//   split_scores: the chunk's scaled q·k for the G heads -> workspace, and each head's chunk max;
//   split_pv:     the row's global max over the chunk maxima, p = bf16(exp(s - max)), the
//                 chunk's rowsum of the unrounded exp and its P·V -> workspace; the last block
//                 of a (row, kv head) to finish (atomic counter) sums the chunks in chunk order
//                 and writes the bf16 output.
// When one chunk covers the capacity (large batches), whole_row does both in one block per
// (kv head, row), the scores kept in shared memory. At small batches a cluster of C blocks per
// (kv head, row) does both in one kernel, meeting in distributed shared memory (cluster_kernel).
// Every sum runs in a fixed order, so a second call gives the same bits; the order depends on
// the chunk size, which the host picks from the grid (rows, n_kv, capacity), never from timing.
//
// Both kernels stream K or V with 4 loads of 16 bytes in flight per thread before any
// arithmetic (the old loop had one), and the next step's 4 in flight while a step computes:
// what decode needs to approach HBM bandwidth. Both buffers need registers: at most 2 blocks
// of 256 threads per SM (3 held the registers to 80, and the compiler then issued each step's
// loads after the previous step's arithmetic: 69.6 against 64.9 us per call at 64 x 640).
// whole_row at head_dim 128 streams through a ring of 4 steps in shared memory instead (3 in
// flight, no registers held: 84% of HBM at 64 x 640 against 76%; whole_row_ring).
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kChunkMin = 64;     // the workspace has room for capacity / kChunkMin chunks
constexpr int kChunkMax = 1024;
// Blocks of the split kernels one SM holds (their registers are bounded for it). The default
// chunk fills one wave of them (see split_chunk).
constexpr int kSplitBlocksPerSm = 2;
constexpr int kMaxRowGroups = 8;  // calls of up to 8 * workspace_rows rows take the split path in groups

constexpr int cmin(int x, int y) { return x < y ? x : y; }
constexpr int cmax(int x, int y) { return x > y ? x : y; }

int max_chunks(int capacity) { return (capacity + kChunkMin - 1) / kChunkMin; }

// How a block's threads cover K or V rows of head_dim HD: a row is HD / 8 pieces of 16 bytes;
// kLanes lanes share a row, lane c loading pieces c + k·kLanes (k < kPieces), so the lanes of
// one load instruction read consecutive bytes; each thread takes kRows rows of a step
// (kPieces · kRows = 4 loads in flight). kPieces shrinks as G grows so that the per-thread q
// (scores) or accumulator (P·V), G · kPieces · 8 floats, stays at 32 (64 for G = 8) registers.
template <int G, int HD, int T = kThreads>
struct RowLayout {
  static constexpr int kPieces = cmin(HD / 8, cmax(1, 4 / G));
  static constexpr int kLanes = HD / 8 / kPieces;
  static constexpr int kRows = 4 / kPieces;
  static constexpr int kSlots = T / kLanes;      // rows side by side in one load instruction of the block
  static constexpr int kStep = kSlots * kRows;  // positions per step of the block
  static_assert(kLanes >= 1 && kLanes <= 32 && kPieces * kRows == 4, "RowLayout");
};

// Piece k (16 bytes) of lane group c's share of cache row jj of `rows` (rows kv_dim apart).
template <class Lay>
__device__ __forceinline__ const uint4* row_piece(const bf16* rows, int kv_dim, int jj, int c, int k) {
  return reinterpret_cast<const uint4*>(rows + static_cast<int64_t>(jj) * kv_dim + (c + k * Lay::kLanes) * 8);
}

// One step's K or V loads of a thread (rows j0 + u * kSlots + slot of `rows`, kv_dim apart);
// rows at or past n are not read (they may hold NaN) and come back as zeros.
template <class Lay>
__device__ __forceinline__ void load_step(uint4 (&raw)[Lay::kRows][Lay::kPieces], const bf16* rows, int kv_dim, int j0,
                                          int n, int c, int slot) {
#pragma unroll
  for (int u = 0; u < Lay::kRows; ++u) {
    const int jj = j0 + u * Lay::kSlots + slot;
#pragma unroll
    for (int k = 0; k < Lay::kPieces; ++k)
      raw[u][k] = jj < n ? __ldg(row_piece<Lay>(rows, kv_dim, jj, c, k)) : make_uint4(0, 0, 0, 0);
  }
}

// Calls step(raw, j0) for the steps j0 = 0, kStep, .. < n of `rows` in order, the next step's
// loads in flight while one computes: two register buffers, swapped by running two steps per
// iteration (an indexed buffer would live in local memory). `first` holds step 0's loads,
// already issued. Loads past n are not issued, so the step after the last costs nothing.
template <class Lay, class Step>
__device__ __forceinline__ void stream_steps(uint4 (&first)[Lay::kRows][Lay::kPieces], const bf16* rows, int kv_dim,
                                             int n, int c, int slot, Step step) {
  uint4 second[Lay::kRows][Lay::kPieces];
  for (int j0 = 0; j0 < n; j0 += 2 * Lay::kStep) {
    load_step<Lay>(second, rows, kv_dim, j0 + Lay::kStep, n, c, slot);
    step(first, j0);
    if (j0 + Lay::kStep >= n) break;
    load_step<Lay>(first, rows, kv_dim, j0 + 2 * Lay::kStep, n, c, slot);
    step(second, j0 + Lay::kStep);
  }
}

// Sums v[0..V) over the kLanes lanes whose indices differ only in the bits of
// kStride * (kLanes - 1), as a reduce-scatter: each round a lane keeps half of its values and
// sends the other half, so V values cost about V shuffles instead of V * log2(kLanes). With
// rank t = (lane / kStride) % kLanes, afterwards v[k] (k < V / kLanes) is the sum of index
// t * V / kLanes + k when V >= kLanes; otherwise v[0] is the sum of index t / (kLanes / V).
// A fixed tree: deterministic.
template <int V, int kLanes, int kStride, int N>
__device__ __forceinline__ void reduce_scatter(float (&v)[N], int lane) {
  if constexpr (kLanes > 1) {
    constexpr int off = kLanes / 2 * kStride;
    if constexpr (V > 1) {
      const bool upper = (lane & off) != 0;
#pragma unroll
      for (int i = 0; i < V / 2; ++i) {
        const float send = upper ? v[i] : v[i + V / 2];
        const float keep = upper ? v[i + V / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(kFull, send, off);
      }
      reduce_scatter<V / 2, kLanes / 2, kStride>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(kFull, v[0], off);
      reduce_scatter<1, kLanes / 2, kStride>(v, lane);
    }
  }
}

// Calls put(index, value) for the sums this lane owns after reduce_scatter<V, kLanes, ..>.
template <int V, int kLanes, int N, class Put>
__device__ __forceinline__ void owned_sums(const float (&v)[N], int rank, Put put) {
  if constexpr (V >= kLanes) {
#pragma unroll
    for (int k = 0; k < V / kLanes; ++k) put(rank * (V / kLanes) + k, v[k]);
  } else {
    constexpr int share = kLanes / V;
    if (rank % share == 0) put(rank / share, v[0]);
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

struct SplitWorkspace {
  float* scores;      // [rows, n_q, capacity] scaled q·k
  float* chunk_m;     // [rows, n_q, stride] max score of each chunk
  float* chunk_l;     // [rows, n_q, stride] sum of exp(s - global max) over each chunk
  float* acc;         // [rows, n_q, stride, hd] each chunk's P·V
  unsigned* arrived;  // [rows, n_kv] (room for [rows, n_q]) P·V blocks done per (row, kv head)
  int chunk;          // positions per chunk, a multiple of kChunkMin
  int stride;         // max_chunks(capacity)
};

// Rows row0 .. row0 + n - 1 of a K or V cache for kv head kvh, streamed to the threads a step
// (Lay::kStep rows) at a time by stream(step), which calls step(raw, j0) for j0 = 0, kStep,
// .. < n with the thread's pieces of those rows in raw (rows at or past n as zeros: they may
// hold NaN and are never read). Two ways, by R:
//  - R = 0: two register buffers, the next step's loads in flight while one computes; the
//    first step's loads are issued on construction.
//  - R >= 2: a ring of R steps in shared memory `ring` ([R][kRows * kPieces][T] uint4),
//    filled by cp.async: R - 1 steps in flight, holding no registers. Each thread copies
//    exactly the pieces it later reads, so it needs no barrier, only its own wait_group; steps
//    0 .. R - 2 are issued on construction.
// Either way the construction issues the first step's rows below `now` (all of them unless the
// kernel reads them before pdl_wait: then load_rest brings the others after it). V does not
// depend on the softmax, so its first loads arrive while the softmax is computed.
template <int G, int HD, int T = kThreads, int R = 0>
struct CacheRows {
  using Lay = RowLayout<G, HD, T>;
  static constexpr int kPer = Lay::kRows * Lay::kPieces;  // pieces of a thread per step
  static_assert(R == 0 || R >= 2, "CacheRows: a ring needs two steps at least");
  const bf16* rows;
  int kv_dim, n;
  uint4 first[Lay::kRows][Lay::kPieces];
  uint4* ring;
  __device__ __forceinline__ CacheRows(const AttentionArgs& a, const bf16* cache, int64_t row0, int kvh, int n_rows,
                                       int now, uint4* ring_smem = nullptr)
      : rows(cache + row0 * (a.n_kv * HD) + kvh * HD), kv_dim(a.n_kv * HD), n(n_rows), ring(ring_smem) {
    if constexpr (R == 0) {
      load_step<Lay>(first, rows, kv_dim, 0, now, threadIdx.x % Lay::kLanes, threadIdx.x / Lay::kLanes);
    } else {
      copy_step(0, 0, now);
      if (now >= n) prefetch();
    }
  }
  // After pdl_wait: the first step's rows from `now` on, with coherent loads (the kernel
  // before may have written them; cp.async.cg reads L2, which is coherent).
  __device__ __forceinline__ void load_rest(int now) {
    if constexpr (R == 0) {
      const int c = threadIdx.x % Lay::kLanes, slot = threadIdx.x / Lay::kLanes;
#pragma unroll
      for (int u = 0; u < Lay::kRows; ++u) {
        const int jj = u * Lay::kSlots + slot;
#pragma unroll
        for (int k = 0; k < Lay::kPieces; ++k)
          if (jj >= now && jj < n) first[u][k] = load_after_wait(row_piece<Lay>(rows, kv_dim, jj, c, k));
      }
    } else if (now < n) {
      copy_step(0, now, n);
      prefetch();
    }
  }

  template <class Step>
  __device__ __forceinline__ void stream(Step step) {
    const int c = threadIdx.x % Lay::kLanes, slot = threadIdx.x / Lay::kLanes;
    if constexpr (R == 0) {
      stream_steps<Lay>(first, rows, kv_dim, n, c, slot, step);
    } else {
      for (int k = 0, j0 = 0; j0 < n; ++k, j0 += Lay::kStep) {
        if (j0 + (R - 1) * Lay::kStep < n) copy_step(k + R - 1, 0, n);
        cp_async_commit();      // (empty past the end: the wait below still counts it)
        cp_async_wait_n<R - 1>();  // step k has landed
        uint4 raw[Lay::kRows][Lay::kPieces];
        const uint4* src = ring + (k % R) * kPer * T + threadIdx.x;
#pragma unroll
        for (int u = 0; u < Lay::kRows; ++u)
#pragma unroll
          for (int p = 0; p < Lay::kPieces; ++p) raw[u][p] = src[(u * Lay::kPieces + p) * T];
        step(raw, j0);
      }
    }
  }

 private:
  // cp.async of the thread's pieces of step k's rows jj in [lo, hi) into ring slot k % R;
  // when hi == n, rows at or past n are zero-filled (nothing read).
  __device__ __forceinline__ void copy_step(int k, int lo, int hi) {
    const int c = threadIdx.x % Lay::kLanes, slot = threadIdx.x / Lay::kLanes;
    uint4* dst = ring + (k % R) * kPer * T + threadIdx.x;
#pragma unroll
    for (int u = 0; u < Lay::kRows; ++u) {
      const int jj = k * Lay::kStep + u * Lay::kSlots + slot;
#pragma unroll
      for (int p = 0; p < Lay::kPieces; ++p) {
        uint4* d = dst + (u * Lay::kPieces + p) * T;
        if (jj >= lo && jj < hi) cp_async16(d, row_piece<Lay>(rows, kv_dim, jj, c, p));
        else if (jj >= n && hi == n) cp_async16(d, rows, false);
      }
    }
  }
  // Closes step 0's group and issues steps 1 .. R - 2, a group each.
  __device__ __forceinline__ void prefetch() {
    cp_async_commit();
#pragma unroll
    for (int k = 1; k < R - 1; ++k) {
      if (k * Lay::kStep < n) copy_step(k, 0, n);
      cp_async_commit();
    }
  }
};

// Shared memory of a CacheRows ring of R steps (0 for registers).
template <int G, int HD, int T, int R>
constexpr size_t ring_bytes() {
  return R == 0 ? 0 : size_t(R) * CacheRows<G, HD, T, R>::kPer * T * sizeof(uint4);
}

// The scaled scores of the G heads of kv head kvh of row r against the K rows kr (their first
// step issued, ahead of q's loads so that the two latencies overlap): tile[g * ld + j] for
// j < kr.n.
template <int G, int HD, int T, int R>
__device__ __forceinline__ void chunk_scores(const AttentionArgs& a, int r, int kvh, CacheRows<G, HD, T, R>& kr,
                                             float* tile, int ld) {
  using Lay = RowLayout<G, HD, T>;
  const int n = kr.n;
  // head_dim**-0.5 rounded once from double, as the reference's pow(hd, -0.5).
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(HD)));
  const int c = threadIdx.x % Lay::kLanes, slot = threadIdx.x / Lay::kLanes, lane = threadIdx.x % 32;

  float q[G][Lay::kPieces][8];  // this lane's pieces of the G query heads
  const bf16* q_row = a.q + static_cast<int64_t>(r) * a.q_stride + kvh * G * HD;
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int k = 0; k < Lay::kPieces; ++k)
#pragma unroll
      for (int i = 0; i < 8; ++i) q[g][k][i] = bf16_to_f32(q_row[g * HD + (c + k * Lay::kLanes) * 8 + i]);

  using Raw = uint4[Lay::kRows][Lay::kPieces];
  kr.stream([&](const Raw& raw, int j0) {
    constexpr int V = Lay::kRows * G;
    float dot[V];  // [row u, head g]: this lane's part of q_g · K[row]
#pragma unroll
    for (int i = 0; i < V; ++i) dot[i] = 0.0f;
#pragma unroll
    for (int u = 0; u < Lay::kRows; ++u)
#pragma unroll
      for (int k = 0; k < Lay::kPieces; ++k) {
        float k8[8];
        unpack8(raw[u][k], k8);
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
          for (int i = 0; i < 8; ++i) dot[u * G + g] += q[g][k][i] * k8[i];
      }
    reduce_scatter<V, Lay::kLanes, 1>(dot, lane);
    owned_sums<V, Lay::kLanes>(dot, c, [&](int idx, float sum) {
      const int jj = j0 + (idx / G) * Lay::kSlots + slot;
      if (jj < n) tile[(idx % G) * ld + jj] = sum * scale;
    });
  });
}

// Each head's maximum of tile [G, ld] over positions 0..n-1, to put(g, max) (one warp per head).
template <int G, int T = kThreads, class Put>
__device__ __forceinline__ void head_maxima(const float* tile, int ld, int n, Put put) {
  const int lane = threadIdx.x % 32;
  for (int g = threadIdx.x / 32; g < G; g += T / 32) {
    float m = -FLT_MAX;
    for (int jj = lane; jj < n; jj += 32) m = fmaxf(m, tile[g * ld + jj]);
    m = warp_max(m);
    if (lane == 0) put(g, m);
  }
}

constexpr int kBatch = 8;  // loads in flight per thread of the L2-resident scores / partial sums

// The softmax numerators of positions 0..n-1: e[g * ld + j] = exp(score(g, j) - row_max[g])
// and p the same rounded to bf16 (e may be the scores' own storage: each element is read
// before it is written, by the same thread); then put(g, l) with l each head's sum of e.
template <int G, int T = kThreads, class Score, class Put>
__device__ __forceinline__ void numerators(int n, int ld, const float* row_max, Score score, float* e, float* p,
                                           Put put) {
  for (int i0 = threadIdx.x; i0 < G * n; i0 += kBatch * T) {
    float sv[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * T;
      sv[u] = i < G * n ? score(i / n, i % n) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * T, g = i / n, jj = i % n;
      if (i < G * n) {
        const float x = expf(sv[u] - row_max[g]);
        e[g * ld + jj] = x;
        p[g * ld + jj] = round_bf16(x);
      }
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int g = warp; g < G; g += T / 32) {
    float l = 0.0f;
    for (int jj = lane; jj < n; jj += 32) l += e[g * ld + jj];
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(kFull, l, o);
    if (lane == 0) put(g, l);
  }
}

// P·V of the n positions of v weighted by p [G, ld]; store(i, o) gets element i = g * HD + d.
// Uses `partial` [T / 32, G, HD] of shared memory, which may overlap p: a barrier comes first.
template <int G, int HD, int T, int R, class Store>
__device__ __forceinline__ void chunk_pv(CacheRows<G, HD, T, R>& v, const float* p, int ld, float* partial, Store store) {
  using Lay = RowLayout<G, HD, T>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int c = threadIdx.x % Lay::kLanes, slot = threadIdx.x / Lay::kLanes, n = v.n;
  constexpr int A = G * Lay::kPieces * 8;
  float acc[A];  // [head g, piece k, element i]
#pragma unroll
  for (int i = 0; i < A; ++i) acc[i] = 0.0f;
  using Raw = uint4[Lay::kRows][Lay::kPieces];
  v.stream([&](const Raw& raw, int j0) {
#pragma unroll
    for (int u = 0; u < Lay::kRows; ++u) {
      const int jj = j0 + u * Lay::kSlots + slot;
      float pg[G];  // rows past the chunk add 0 * 0 (their V is never loaded: it may be NaN)
#pragma unroll
      for (int g = 0; g < G; ++g) pg[g] = jj < n ? p[g * ld + jj] : 0.0f;
#pragma unroll
      for (int k = 0; k < Lay::kPieces; ++k) {
        float v8[8];
        unpack8(raw[u][k], v8);
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[(g * Lay::kPieces + k) * 8 + i] += pg[g] * v8[i];
      }
    }
  });
  // The kLanes-apart lanes of a warp hold the same elements: reduce them in registers, then
  // the warps' partials meet in shared memory and are added in warp order.
  constexpr int kSameLanes = 32 / Lay::kLanes;
  reduce_scatter<A, kSameLanes, Lay::kLanes>(acc, lane);
  __syncthreads();
  owned_sums<A, kSameLanes>(acc, lane / Lay::kLanes, [&](int idx, float sum) {
    const int g = idx / (Lay::kPieces * 8), k = (idx / 8) % Lay::kPieces, i = idx % 8;
    partial[(warp * G + g) * HD + (c + k * Lay::kLanes) * 8 + i] = sum;
  });
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += T) {
    float o = 0.0f;
    for (int k = 0; k < T / 32; ++k) o += partial[k * G * HD + i];
    store(i, o);
  }
}

// Dynamic shared memory of split_pv, whole_row and cluster_kernel: e and p [G, ld], later
// overlaid by the P·V partial sums of T / 32 warps [T / 32, G, HD]; then, for a K/V ring of R
// steps (whole_row, cluster_kernel), the ring at ring_offset.
template <int G, int HD, int T = kThreads>
__host__ __device__ constexpr size_t pv_smem_bytes(int ld) {
  return sizeof(float) * (2 * G * ld > T / 32 * G * HD ? 2 * G * ld : T / 32 * G * HD);
}
template <int G, int HD, int T>
__host__ __device__ constexpr size_t ring_offset(int ld) {
  return (pv_smem_bytes<G, HD, T>(ld) + 15) / 16 * 16;
}
template <int G, int HD, int T, int R>
size_t decode_smem_bytes(int ld) {
  return R == 0 ? pv_smem_bytes<G, HD, T>(ld) : ring_offset<G, HD, T>(ld) + ring_bytes<G, HD, T, R>();
}
template <int G, int HD, int T>
__device__ __forceinline__ uint4* ring_at(float* smem, int ld) {
  return reinterpret_cast<uint4*>(reinterpret_cast<char*>(smem) + ring_offset<G, HD, T>(ld));
}

// Block (chunk, kv head, row): the chunk's scores for the G heads (via shared memory `tile`
// [G, chunk], then written out coalesced) and each head's maximum over the chunk.
template <int G, int HD>
__global__ void __launch_bounds__(kThreads, kSplitBlocksPerSm) split_scores_kernel(AttentionArgs a, SplitWorkspace w) {
  pdl_wait();
  extern __shared__ float tile[];
  const int chunk = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int L = a.pos[r] + 1, j_begin = chunk * w.chunk;
  const int seq = a.seq[r];
  // seq < 0 never holds; testing it makes the compiler load seq[r] alongside pos[r] instead of
  // after the branch (one L2 round trip less before the first K/V load).
  if (j_begin >= L || seq < 0) return;
  const int n = min(L - j_begin, w.chunk);
  // The counter split_pv counts on starts from zero here, so the caller never clears it.
  if (chunk == 0 && threadIdx.x == 0) w.arrived[r * a.n_kv + kvh] = 0;
  CacheRows<G, HD> kr(a, a.k_cache, static_cast<int64_t>(seq) * a.capacity + j_begin, kvh, n, n);
  chunk_scores<G, HD>(a, r, kvh, kr, tile, w.chunk);
  __syncthreads();

  const int64_t rh0 = static_cast<int64_t>(r) * a.n_q + kvh * G;
  float* s_out = w.scores + rh0 * a.capacity + j_begin;
  for (int i = threadIdx.x; i < G * n; i += kThreads)
    s_out[(i / n) * a.capacity + i % n] = tile[(i / n) * w.chunk + i % n];
  head_maxima<G>(tile, w.chunk, n, [&](int g, float m) { w.chunk_m[(rh0 + g) * w.stride + chunk] = m; });
}

// Block (chunk, kv head, row): p = bf16(exp(s - M)) with M the row's global max, the chunk's
// sum of the unrounded exp and its P·V; the last block of (row, kv head) to arrive adds up the
// chunks. Dynamic shared memory: e, p [G, chunk], then (reused) partial sums [kWarps, G, HD].
template <int G, int HD>
__global__ void __launch_bounds__(kThreads, kSplitBlocksPerSm) split_pv_kernel(AttentionArgs a, SplitWorkspace w) {
  pdl_wait();
  extern __shared__ float smem[];
  __shared__ float row_max[G];
  __shared__ float inv_sum[G];
  const int chunk = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int L = a.pos[r] + 1, j_begin = chunk * w.chunk;
  const int seq = a.seq[r];
  // seq < 0 never holds; testing it makes the compiler load seq[r] alongside pos[r] instead of
  // after the branch (one L2 round trip less before the first K/V load).
  if (j_begin >= L || seq < 0) return;
  const int n = min(L - j_begin, w.chunk), used = (L + w.chunk - 1) / w.chunk;
  const int64_t rh0 = static_cast<int64_t>(r) * a.n_q + kvh * G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  CacheRows<G, HD> v(a, a.v_cache, static_cast<int64_t>(seq) * a.capacity + j_begin, kvh, n, n);

  for (int g = warp; g < G; g += kWarps) {
    float m = -FLT_MAX;
    for (int k = lane; k < used; k += 32) m = fmaxf(m, w.chunk_m[(rh0 + g) * w.stride + k]);
    m = warp_max(m);
    if (lane == 0) row_max[g] = m;
  }
  __syncthreads();
  float* e = smem;                // [G, chunk] exp(s - M)
  float* p = smem + G * w.chunk;  // [G, chunk] the same rounded to bf16
  const float* s_in = w.scores + rh0 * a.capacity + j_begin;
  numerators<G>(
      n, w.chunk, row_max, [&](int g, int jj) { return s_in[g * a.capacity + jj]; }, e, p,
      [&](int g, float l) { w.chunk_l[(rh0 + g) * w.stride + chunk] = l; });
  chunk_pv<G, HD>(v, p, w.chunk, smem,
                  [&](int i, float o) { w.acc[((rh0 + i / HD) * w.stride + chunk) * HD + i % HD] = o; });

  // Last block arrives: publish this chunk's acc / chunk_l, count it, and the block that brings
  // the count to `used` reads everyone's (from L2: __ldcg) and sums them in chunk order.
  if (!last_block_to_arrive(&w.arrived[r * a.n_kv + kvh], static_cast<unsigned>(used))) return;
  // Sums over k = 0 .. used - 1 in that order, kBatch loads issued before their adds.
  const auto sum_chunks = [&](const float* x, int step) {
    float total = 0.0f;
    for (int k0 = 0; k0 < used; k0 += kBatch) {
      float xv[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) xv[u] = k0 + u < used ? __ldcg(x + static_cast<int64_t>(k0 + u) * step) : 0.0f;
#pragma unroll
      for (int u = 0; u < kBatch; ++u)
        if (k0 + u < used) total += xv[u];
    }
    return total;
  };
  if (threadIdx.x < G) inv_sum[threadIdx.x] = 1.0f / sum_chunks(w.chunk_l + (rh0 + threadIdx.x) * w.stride, 1);
  __syncthreads();
  bf16* out = a.out + static_cast<int64_t>(r) * a.n_q * HD + kvh * G * HD;
  for (int i = threadIdx.x; i < G * HD; i += kThreads)
    out[i] = f32_to_bf16(sum_chunks(w.acc + ((rh0 + i / HD) * w.stride) * HD + i % HD, HD) * inv_sum[i / HD]);
}

// Block (kv head, row) when one chunk covers the whole capacity: the two kernels above in one,
// with no workspace. Its maximum, sum and P·V are the one chunk's, which the split pair would
// sum from zero (0 + x = x): the same arithmetic as the split pair at T = kThreads.
// T threads a block: kThreads, or half as many at twice the blocks per SM where the grid holds
// more than one wave of kThreads blocks (see launch_split_kernels); P·V then adds 4 warps'
// partial sums instead of 8 (other f32 bits, the same bound).
// Dynamic shared memory: scores, then e in their place, and p [G, chunk]; then partial sums;
// then, with R > 0, the ring K and then V stream through (see CacheRows and whole_row_ring).
// With a.history_settled, K's first step (but the row's newest position) is read before
// pdl_wait.
template <int G, int HD, int T, int R>
__global__ void __launch_bounds__(T, kSplitBlocksPerSm * kThreads / T) whole_row_kernel(AttentionArgs a, int ld) {
  const bool early = a.history_settled;
  if (!early) pdl_wait();
  extern __shared__ float smem[];
  __shared__ float row_max[G];
  __shared__ float inv_sum[G];
  const int kvh = blockIdx.y, r = blockIdx.z;
  const int n = a.pos[r] + 1;
  const int seq = a.seq[r];
  if (seq < 0) return;  // never; loads seq[r] beside pos[r] (see split_scores_kernel)
  const int64_t slot_row = static_cast<int64_t>(seq) * a.capacity;
  float* e = smem;           // [G, ld] the scores, then exp(s - M) in their place
  float* p = smem + G * ld;  // [G, ld] exp(s - M) rounded to bf16
  const int now = early ? n - 1 : n;
  uint4* ring = ring_at<G, HD, T>(smem, ld);  // K's ring, then V's (each thread's own pieces)
  CacheRows<G, HD, T, R> kr(a, a.k_cache, slot_row, kvh, n, now, ring);
  if (early) {
    pdl_wait();
    kr.load_rest(now);
  }
  chunk_scores<G, HD>(a, r, kvh, kr, e, ld);
  CacheRows<G, HD, T, R> v(a, a.v_cache, slot_row, kvh, n, n, ring);
  __syncthreads();
  head_maxima<G, T>(e, ld, n, [&](int g, float m) { row_max[g] = m; });
  __syncthreads();
  numerators<G, T>(
      n, ld, row_max, [&](int g, int jj) { return e[g * ld + jj]; }, e, p,
      [&](int g, float l) { inv_sum[g] = 1.0f / l; });
  bf16* out = a.out + static_cast<int64_t>(r) * a.n_q * HD + kvh * G * HD;
  chunk_pv<G, HD>(v, p, ld, smem, [&](int i, float o) { out[i] = f32_to_bf16(o * inv_sum[i / HD]); });
}

// Cluster of C blocks per (kv head, row) (grid (C, n_kv, rows), cluster (C, 1, 1)): block k
// takes positions [k * len, (k + 1) * len) of the row's L, len = ceil(L / C), and the blocks
// meet in distributed shared memory instead of a global workspace: after a cluster barrier
// each reads the C chunk maxima (the global max), computes its chunk's numerators, sum and P·V
// as split_pv does, and after a second barrier adds a slice of the outputs over the C chunks
// in rank order; a third keeps every block's shared memory alive until the others have read
// it. One kernel, no atomics; the sums run from zero in rank order, as the split pair's over
// its chunks.
// With a.history_settled, K's first step (but the row's newest position) is read before
// pdl_wait.
// Dynamic shared memory: scores, then e in their place, and p [G, ld]; then partial sums.
template <int G, int HD>
__global__ void __launch_bounds__(kThreads, kSplitBlocksPerSm) cluster_kernel(AttentionArgs a, int ld) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // no clusters below sm_90; the host never launches it there (clusters_supported)
#else
  const bool early = a.history_settled;
  if (!early) pdl_wait();
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float smem[];
  __shared__ float chunk_max[G];
  __shared__ float chunk_sum[G];
  __shared__ float row_max[G];
  __shared__ float chunk_acc[G * HD];
  const int C = static_cast<int>(cluster.num_blocks()), k = static_cast<int>(cluster.block_rank());
  const int kvh = blockIdx.y, r = blockIdx.z;
  const int L = a.pos[r] + 1;
  const int seq = a.seq[r];  // the same for the whole cluster: all of it returns or none
  if (seq < 0) return;       // never; loads seq[r] beside pos[r] (see split_scores_kernel)
  const int len = (L + C - 1) / C, j_begin = min(k * len, L), n = min(L - j_begin, len);  // n may be 0
  const int64_t slot_row = static_cast<int64_t>(seq) * a.capacity;
  float* e = smem;           // [G, ld] the scores, then exp(s - M) in their place
  float* p = smem + G * ld;  // [G, ld] exp(s - M) rounded to bf16
  const int now = early ? max(0, min(n, L - 1 - j_begin)) : n;
  CacheRows<G, HD> kr(a, a.k_cache, slot_row + j_begin, kvh, n, now);
  if (early) {
    pdl_wait();
    kr.load_rest(now);
  }
  if (n > 0) chunk_scores<G, HD>(a, r, kvh, kr, e, ld);
  CacheRows<G, HD> v(a, a.v_cache, slot_row + j_begin, kvh, n, n);
  __syncthreads();
  head_maxima<G>(e, ld, n, [&](int g, float m) { chunk_max[g] = m; });
  cluster.sync();
  if (threadIdx.x < G) {
    float m = -FLT_MAX;
    for (int q = 0; q < C; ++q) m = fmaxf(m, *cluster.map_shared_rank(&chunk_max[threadIdx.x], q));
    row_max[threadIdx.x] = m;
  }
  __syncthreads();
  numerators<G>(
      n, ld, row_max, [&](int g, int jj) { return e[g * ld + jj]; }, e, p, [&](int g, float l) { chunk_sum[g] = l; });
  chunk_pv<G, HD>(v, p, ld, smem, [&](int i, float o) { chunk_acc[i] = o; });
  cluster.sync();
  bf16* out = a.out + static_cast<int64_t>(r) * a.n_q * HD + kvh * G * HD;
  for (int i = k * kThreads + threadIdx.x; i < G * HD; i += C * kThreads) {
    float o = 0.0f, l = 0.0f;
    for (int q = 0; q < C; ++q) {
      o += cluster.map_shared_rank(chunk_acc, q)[i];
      l += *cluster.map_shared_rank(&chunk_sum[i / HD], q);
    }
    out[i] = f32_to_bf16(o * (1.0f / l));
  }
  cluster.sync();
#endif
}

int sm_count() {
  static const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  return sms;
}

// One chunk per (row, kv head) (whole_row_kernel) once there is a pair for every two SMs;
// below that, as many chunks as one wave of blocks has room for, each the smallest multiple of
// kChunkMin that covers the capacity with them (at most kChunkMax): every SM busy at small
// batches, and no second wave of a few blocks. Chunks past a row's position are empty blocks
// that return at once. Measured on an H200 (Llama-3.1-8B heads, llmq_attention_bench --mode
// decode, capacity 640 or 2048; us per layer call):
//   batch x length   1 x 640   16 x 512   16 x 640   64 x 512   64 x 640   8 x 2048
//   old rule          10.04     21.94      23.33      62.06      74.80      36.18
//   this rule         10.14     16.16      19.95      42.18      51.46      28.61
// The old rule: power-of-two chunks under 4 blocks per SM, single-buffered steps, two
// kernels always. This one is within 5% of the best forced chunk in each of these cases.
int split_chunk(const AttentionArgs& a) {
  if (a.split_chunk > 0) return a.split_chunk;
  const int64_t pairs = static_cast<int64_t>(a.rows) * a.n_kv;
  const int64_t chunks =
      2 * pairs >= sm_count() ? 1 : std::max<int64_t>(1, static_cast<int64_t>(kSplitBlocksPerSm) * sm_count() / pairs);
  const int64_t c = (a.capacity + chunks - 1) / chunks;
  return static_cast<int>(std::clamp<int64_t>((c + kChunkMin - 1) / kChunkMin * kChunkMin, kChunkMin, kChunkMax));
}

constexpr int kMaxCluster = 8;
constexpr int kClusterLenMax = 320;
bool clusters_supported() { return compute_capability() >= 90; }  // thread-block clusters: sm_90 and up

// Positions of the capacity per block of a cluster of C blocks.
int cluster_chunk(const AttentionArgs& a, int C) { return (a.capacity + C - 1) / C; }

// cluster_kernel<G, HD>'s dynamic shared memory for chunks of ld positions, allowed on the
// kernel (as its launch and the occupancy query need).
template <int G, int HD>
size_t allow_cluster_smem(int ld) {
  const size_t bytes = pv_smem_bytes<G, HD>(ld);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(cluster_kernel<G, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  return bytes;
}

// Clusters of C blocks of cluster_kernel<G, HD> that the device runs at once: one wave; 0 where
// the blocks' chunks would be longer than kChunkMax (the path never runs those). Asked of the
// driver once per (C, chunk): a cluster must fit in one GPC, so this is less than the SM slots
// over C (H200, 8B heads: 264, 132, 62 and 30 for C = 1, 2, 4, 8, where 264 / C would give 66
// and 33).
template <int G, int HD>
int max_active_clusters(const AttentionArgs& a, int C) {
  const int ld = cluster_chunk(a, C);
  if (ld > kChunkMax) return 0;
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> known;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find({C, ld}); it != known.end()) return it->second;
  const size_t bytes = allow_cluster_smem<G, HD>(ld);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(C);
  attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(C, a.n_kv, a.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = bytes;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int n = 0;
  LLMQ_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, cluster_kernel<G, HD>, &cfg));
  known.emplace(std::pair{C, ld}, n);
  return n;
}

// Blocks per (row, kv head) pair on the cluster path: the largest power of two up to the
// portable cluster size whose clusters all run at once (one wave; max_active_clusters).
// launch_split_kernels takes the path when that is 2 or more and each block's chunk of the
// capacity is at most kClusterLenMax positions or no longer than the split pair's chunks
// would be (then the same blocks, without the pair's round trip through the workspace).
// Measured on an H200 (Llama-3.1-8B heads, llmq_attention_bench --mode decode; us per layer
// call, capacity 640 unless said):
//   batch x length   1 x 512  4 x 512  8 x 512  16 x 512  1 x 2048  4 x 2048  8 x 2048  16 x 2048
//   C = 8             5.92    13.19    21.33    37.29     10.52     24.06     38.49     66.47
//   C = 4             7.17     8.85    16.59    26.10     15.66     20.91     37.67     58.84
//   C = 2             9.71    10.16    11.14    13.75     26.95     28.10     30.46     40.57
//   split pair        9.59    11.35    13.23    16.06     12.95     18.00     28.61     49.03
// (the split pair at its best forced chunk; from 4 x 2048 up that is its default one.)
// An earlier rule filled the SM slots (264 / C clusters) and so ran a second wave of a few
// clusters at 3-8 rows: C = 8 at 4 rows, C = 4 at 8. At batch 64 (C = 1) whole_row stays:
// 51.7 against the cluster kernel's 55.3 at 64 x 640. The cluster kernel in blocks of 128
// threads (as whole_row at batch 64) measured slower everywhere (DESIGN.md).
template <int G, int HD>
int cluster_size(const AttentionArgs& a) {
  if (a.cluster > 0) return a.cluster;
  const int64_t pairs = static_cast<int64_t>(a.rows) * a.n_kv;
  int C = kMaxCluster;
  while (C > 1 && pairs > max_active_clusters<G, HD>(a, C)) C /= 2;
  return C;
}

template <int G, int HD>
void launch_cluster_kernel(const AttentionArgs& a, int C, cudaStream_t s) {
  const int ld = cluster_chunk(a, C);
  const size_t bytes = allow_cluster_smem<G, HD>(ld);
  launch_pdl_cluster(cluster_kernel<G, HD>, dim3(C, a.n_kv, a.rows), dim3(kThreads), bytes, C, s, a, ld);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// whole_row_kernel<G, HD, T, R>'s dynamic shared memory for chunks of ld positions, allowed on
// the kernel; with `blocks`, how many of its blocks an SM holds.
template <int G, int HD, int T, int R>
size_t allow_whole_row_smem(int ld, int* blocks = nullptr) {
  const size_t bytes = decode_smem_bytes<G, HD, T, R>(ld);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(whole_row_kernel<G, HD, T, R>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  if (blocks) LLMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, whole_row_kernel<G, HD, T, R>, T, bytes));
  return bytes;
}

// K/V ring steps of whole_row at head_dim 128 (other head dims stream through registers).
// Measured on an H200 (llmq_attention_bench --mode decode, 8B heads, us per layer call):
//   batch x length   32 x 512   64 x 512   64 x 640
//   registers         21.36      40.56      50.08
//   ring of 3         25.72      42.44      52.47
//   ring of 4         19.84      36.46      44.93
//   ring of 6         26.19      42.98      53.64
// (6 steps leave fewer blocks per SM; 3 keep too few copies in flight.) The default takes the
// ring of 4 where an SM holds as many of its blocks as of the register kernel's (long
// capacities at G = 8 need the shared memory for scores); AttentionArgs::kv_ring forces it.
constexpr int kWholeRowRing = 4;

template <int G, int HD, int T>
bool whole_row_ring(const AttentionArgs& a, int ld) {
  if constexpr (HD != 128) {
    return false;
  } else {
    if (a.kv_ring != 0) return a.kv_ring > 0;
    static std::mutex mutex;
    static std::map<int, bool> known;
    const std::lock_guard<std::mutex> lock(mutex);
    if (const auto it = known.find(ld); it != known.end()) return it->second;
    int with_ring = 0, without = 0;
    allow_whole_row_smem<G, HD, T, kWholeRowRing>(ld, &with_ring);
    allow_whole_row_smem<G, HD, T, 0>(ld, &without);
    return known.emplace(ld, with_ring >= without).first->second;
  }
}

template <int G, int HD, int T, int R>
void launch_whole_row(const AttentionArgs& a, dim3 grid, int chunk, cudaStream_t s) {
  const size_t bytes = allow_whole_row_smem<G, HD, T, R>(chunk);
  launch_pdl(whole_row_kernel<G, HD, T, R>, grid, dim3(T), bytes, s, a, chunk);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <int G, int HD, int T>
void launch_whole_row(const AttentionArgs& a, dim3 grid, int chunk, cudaStream_t s) {
  if (whole_row_ring<G, HD, T>(a, chunk)) return launch_whole_row<G, HD, T, kWholeRowRing>(a, grid, chunk, s);
  launch_whole_row<G, HD, T, 0>(a, grid, chunk, s);
}

template <int G, int HD>
void launch_split_kernels(const AttentionArgs& a, cudaStream_t s) {
  if (a.split_chunk == 0 && clusters_supported()) {
    const int C = cluster_size<G, HD>(a);
    const int ld = cluster_chunk(a, C);  // a forced C still needs chunks of <= kChunkMax
    const bool take = a.cluster > 0 ? ld <= kChunkMax
                                    : C >= 2 && ld <= kChunkMax && (ld <= kClusterLenMax || ld <= split_chunk(a));
    if (take) return launch_cluster_kernel<G, HD>(a, C, s);
  }
  const int64_t rh = static_cast<int64_t>(a.rows) * a.n_q, stride = max_chunks(a.capacity);
  SplitWorkspace w;
  w.scores = a.workspace;
  w.chunk_m = w.scores + rh * a.capacity;
  w.chunk_l = w.chunk_m + rh * stride;
  w.acc = w.chunk_l + rh * stride;
  w.arrived = reinterpret_cast<unsigned*>(w.acc + rh * stride * a.hd);
  w.chunk = split_chunk(a);
  w.stride = static_cast<int>(stride);
  const dim3 grid((a.capacity + w.chunk - 1) / w.chunk, a.n_kv, a.rows);
  if (w.chunk >= a.capacity) {  // one chunk per row: one kernel, no workspace round trip
    // More (row, kv head) pairs than one wave of kThreads blocks holds: half-size blocks, twice
    // as many per SM, so that one wave takes up to twice the pairs and the blocks' K, softmax
    // and V phases overlap (64 x 640 at 8B heads, H200: see DESIGN.md).
    if (static_cast<int64_t>(a.rows) * a.n_kv > static_cast<int64_t>(kSplitBlocksPerSm) * sm_count())
      launch_whole_row<G, HD, kThreads / 2>(a, grid, w.chunk, s);
    else
      launch_whole_row<G, HD, kThreads>(a, grid, w.chunk, s);
    return;
  }
  const size_t scores_bytes = sizeof(float) * G * w.chunk, pv_bytes = pv_smem_bytes<G, HD>(w.chunk);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(split_scores_kernel<G, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(scores_bytes)));
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(split_pv_kernel<G, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(pv_bytes)));
  launch_pdl(split_scores_kernel<G, HD>, dim3(grid), dim3(kThreads), scores_bytes, s, a, w);
  LLMQ_CUDA_CHECK_LAUNCH();
  launch_pdl(split_pv_kernel<G, HD>, dim3(grid), dim3(kThreads), pv_bytes, s, a, w);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// Calls f(std::integral_constant<int, G>{}, std::integral_constant<int, HD>{}) for the call's
// GQA group and head dim, which the caller has checked (G in 1, 2, 4, 8; supported_head_dim).
template <class F>
decltype(auto) with_split_shape(const AttentionArgs& a, F f) {
  const auto by_head_dim = [&](auto g) -> decltype(auto) {
    switch (a.hd) {
      case 8: return f(g, std::integral_constant<int, 8>{});
      case 16: return f(g, std::integral_constant<int, 16>{});
      case 32: return f(g, std::integral_constant<int, 32>{});
      case 64: return f(g, std::integral_constant<int, 64>{});
      case 128: return f(g, std::integral_constant<int, 128>{});
      default: return f(g, std::integral_constant<int, 256>{});
    }
  };
  switch (a.n_q / a.n_kv) {
    case 1: return by_head_dim(std::integral_constant<int, 1>{});
    case 2: return by_head_dim(std::integral_constant<int, 2>{});
    case 4: return by_head_dim(std::integral_constant<int, 4>{});
    default: return by_head_dim(std::integral_constant<int, 8>{});
  }
}

// The checks attention() makes on the head layout.
void check_heads(const AttentionArgs& a) {
  LLMQ_CHECK(supported_head_dim(a.hd), "attention: head_dim " << a.hd << " unsupported");
  LLMQ_CHECK(a.n_q % a.n_kv == 0, "attention: " << a.n_q << " heads over " << a.n_kv << " kv heads");
  const int G = a.n_q / a.n_kv;
  LLMQ_CHECK(G == 1 || G == 2 || G == 4 || G == 8, "attention: GQA group " << G << " unsupported (1, 2, 4, 8)");
}

}  // namespace

int attention_max_capacity(int n_q, int n_kv, int hd) {
  if (n_kv <= 0 || n_q % n_kv != 0 || !supported_head_dim(hd)) return 0;
  const int G = n_q / n_kv;
  const size_t fixed = smem_bytes(G, hd, 0);
  const size_t avail = static_cast<size_t>(max_dynamic_smem());
  return avail > fixed ? static_cast<int>((avail - fixed) / (sizeof(float) * G)) : 0;
}

int attention_max_active_clusters(const AttentionArgs& a, int cluster) {
  check_heads(a);
  if (!clusters_supported()) return 0;
  return with_split_shape(
      a, [&](auto g, auto hd) { return max_active_clusters<decltype(g)::value, decltype(hd)::value>(a, cluster); });
}

size_t attention_workspace_floats(int rows, int n_q, int hd, int capacity) {
  const size_t rh = static_cast<size_t>(rows) * n_q, chunks = max_chunks(capacity);
  // scores, chunk_m, chunk_l, acc, and the arrival counters (one 32-bit word per (row, head)).
  return rh * capacity + 2 * rh * chunks + rh * chunks * hd + rh;
}

void attention(const AttentionArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  check_heads(a);
  const int G = a.n_q / a.n_kv;
  LLMQ_CHECK(a.cluster == 0 || a.cluster == 1 || a.cluster == 2 || a.cluster == 4 || a.cluster == 8,
             "attention: cluster " << a.cluster << " is not 1, 2, 4 or 8");
  LLMQ_CHECK(a.split_chunk == 0 || (a.split_chunk % kChunkMin == 0 && a.split_chunk <= kChunkMax),
             "attention: split_chunk " << a.split_chunk << " is not a multiple of " << kChunkMin << " up to "
                                       << kChunkMax);
  const bool split = a.workspace != nullptr && a.workspace_rows > 0 &&
                     a.rows <= static_cast<int64_t>(kMaxRowGroups) * a.workspace_rows;
  if (!split) {
    switch (G) {
      case 1: return launch<1>(a, s);
      case 2: return launch<2>(a, s);
      case 4: return launch<4>(a, s);
      default: return launch<8>(a, s);
    }
  }
  // Groups of workspace_rows rows, one after another on the stream (they share the workspace).
  for (int r0 = 0; r0 < a.rows; r0 += a.workspace_rows) {
    const AttentionArgs b = attention_rows(a, r0, std::min(a.workspace_rows, a.rows - r0));
    with_split_shape(b, [&](auto g, auto hd) { launch_split_kernels<decltype(g)::value, decltype(hd)::value>(b, s); });
  }
}

}  // namespace llmq::gpu
