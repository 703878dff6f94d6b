// Causal GQA attention over the BF16 KV cache, for decode (one row per sequence) and prefill
// (many rows per sequence) alike: one block per (token row, kv head) computes the G = n_q /
// n_kv query heads that share that kv head, so each K/V row is read once for all of them.
// Scores for all visible positions live in shared memory (so the cache capacity is bounded by
// attention_max_capacity), softmax is exact (max, then exp), and P·V is split over position
// slices that are summed at the end. Rounding as model/llama.cc's flash-SDPA emulation.
//
// Each K/V row is read as 16-byte chunks of 8 bf16: hd/8 lanes cover one row, and the lane
// groups of a warp cover consecutive rows, so loads are coalesced for any hd in 8..256.
// Here prefill re-reads K/V per query row (O(T^2) L2 traffic, CUDA cores): prefill whose rows'
// layout is known on the host goes to the tensor-core kernel instead (attention_prefill.h),
// which falls back to this one for short spans and head shapes it does not cover.
#include <cfloat>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq::gpu {
namespace {

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
  int dev = 0, bytes = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&dev));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes - 1024;  // the static reduce / inv_sum arrays
}

bool supported_head_dim(int hd) { return hd % 8 == 0 && hd >= 8 && hd <= 256 && ((hd / 8) & (hd / 8 - 1)) == 0; }

template <int G>
void launch(const AttentionArgs& a, cudaStream_t s) {
  const size_t bytes = smem_bytes(G, a.hd, a.capacity);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  attention_kernel<G><<<dim3(a.rows, a.n_kv), kThreads, bytes, s>>>(a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// ---- split over position chunks (decode) ------------------------------------------------
constexpr int kChunk = 64;

int num_chunks(int capacity) { return (capacity + kChunk - 1) / kChunk; }

struct SplitWorkspace {
  float* scores;   // [rows, n_q, capacity]
  float* chunk_m;  // [rows, n_q, chunks] max score of the chunk (-FLT_MAX when empty)
  float* chunk_l;  // [rows, n_q, chunks] sum of exp(s - global max) over the chunk
  float* acc;      // [rows, n_q, chunks, hd] partial P·V
};

SplitWorkspace split_workspace(const AttentionArgs& a) {
  const int64_t rh = int64_t(a.rows) * a.n_q, chunks = num_chunks(a.capacity);
  SplitWorkspace w;
  w.scores = a.workspace;
  w.chunk_m = w.scores + rh * a.capacity;
  w.chunk_l = w.chunk_m + rh * chunks;
  w.acc = w.chunk_l + rh * chunks;
  return w;
}

// Block (row, kv head, chunk): the chunk's scores for the G heads and their maxima.
template <int G>
__global__ void __launch_bounds__(kThreads) split_scores_kernel(AttentionArgs a, SplitWorkspace w) {
  __shared__ float q[G * 256];
  __shared__ float warp_max[G][kThreads / 32];
  const int r = blockIdx.x, kvh = blockIdx.y, chunk = blockIdx.z, chunks = gridDim.z;
  const int hd = a.hd, lanes = hd / 8, slices = kThreads / lanes;
  const int L = a.pos[r] + 1, j_begin = chunk * kChunk, j_end = min(L, j_begin + kChunk);
  const int kv_dim = a.n_kv * hd;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(hd)));
  for (int i = threadIdx.x; i < G * hd; i += kThreads)
    q[i] = bf16_to_f32(a.q[static_cast<int64_t>(r) * a.q_stride + (kvh * G) * hd + i]);
  __syncthreads();
  const int64_t base = static_cast<int64_t>(a.seq[r]) * a.capacity * kv_dim + kvh * hd;
  const int c = threadIdx.x % lanes, slice = threadIdx.x / lanes;
  float m[G];
  for (int g = 0; g < G; ++g) m[g] = -FLT_MAX;
  for (int j0 = j_begin; j0 < j_end; j0 += slices) {  // uniform trip count across the block
    const int j = j0 + slice;
    float dot[G];
    score_row<G>(q, a.k_cache + base + static_cast<int64_t>(j) * kv_dim, j < j_end, hd, c, lanes, dot);
    if (j < j_end)
      for (int g = 0; g < G; ++g) {
        const float sc = dot[g] * scale;
        m[g] = fmaxf(m[g], sc);
        if (c == 0) w.scores[(int64_t(r) * a.n_q + kvh * G + g) * a.capacity + j] = sc;
      }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int g = 0; g < G; ++g) {
    float v = m[g];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) warp_max[g][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < G) {
    float v = -FLT_MAX;
    for (int i = 0; i < kThreads / 32; ++i) v = fmaxf(v, warp_max[threadIdx.x][i]);
    w.chunk_m[(int64_t(r) * a.n_q + kvh * G + threadIdx.x) * chunks + chunk] = v;
  }
}

// Block (row, kv head, chunk): p = bf16(exp(s - M)), M the row's global max; the chunk's sum
// of the unrounded exp and its partial P·V. Dynamic shared memory: [slices, G, hd] partials.
template <int G>
__global__ void __launch_bounds__(kThreads) split_pv_kernel(AttentionArgs a, SplitWorkspace w) {
  extern __shared__ float partial[];
  __shared__ float row_max[G];
  __shared__ float e[G][kChunk];
  __shared__ float p[G][kChunk];
  const int r = blockIdx.x, kvh = blockIdx.y, chunk = blockIdx.z, chunks = gridDim.z;
  const int hd = a.hd;
  const int L = a.pos[r] + 1, j_begin = chunk * kChunk, n = max(0, min(L, j_begin + kChunk) - j_begin);
  const int kv_dim = a.n_kv * hd;
  const int64_t rh0 = int64_t(r) * a.n_q + kvh * G;
  if (threadIdx.x < G) {
    float M = -FLT_MAX;
    for (int k = 0; k < chunks; ++k) M = fmaxf(M, w.chunk_m[(rh0 + threadIdx.x) * chunks + k]);
    row_max[threadIdx.x] = M;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * kChunk; i += kThreads) {
    const int g = i / kChunk, jj = i % kChunk;
    const float v = jj < n ? expf(w.scores[(rh0 + g) * a.capacity + j_begin + jj] - row_max[g]) : 0.0f;
    e[g][jj] = v;
    p[g][jj] = round_bf16(v);
  }
  __syncthreads();
  if (threadIdx.x < G) {  // fixed order: deterministic
    float l = 0.0f;
    for (int jj = 0; jj < n; ++jj) l += e[threadIdx.x][jj];
    w.chunk_l[(rh0 + threadIdx.x) * chunks + chunk] = l;
  }
  const int64_t base = static_cast<int64_t>(a.seq[r]) * a.capacity * kv_dim + kvh * hd;
  pv_slices<G>(
      a.v_cache + base + static_cast<int64_t>(j_begin) * kv_dim, kv_dim, n, hd,
      [&](int g, int jj) { return p[g][jj]; }, partial,
      [&](int i, float o) { w.acc[((rh0 + i / hd) * chunks + chunk) * hd + i % hd] = o; });
}

// Block (row, head), one thread per dim: the chunks' sums, times 1/rowsum, rounded to bf16.
__global__ void split_combine_kernel(AttentionArgs a, SplitWorkspace w, int chunks) {
  const int r = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int64_t rh = int64_t(r) * a.n_q + h;
  const int used = (a.pos[r] + kChunk) / kChunk;  // chunks holding positions 0..pos[r]
  float o = 0.0f, l = 0.0f;
  for (int k = 0; k < used; ++k) {
    o += w.acc[(rh * chunks + k) * a.hd + d];
    l += w.chunk_l[rh * chunks + k];
  }
  a.out[rh * a.hd + d] = f32_to_bf16(o * (1.0f / l));
}

template <int G>
void launch_split(const AttentionArgs& a, cudaStream_t s) {
  const int chunks = num_chunks(a.capacity);
  const SplitWorkspace w = split_workspace(a);
  const dim3 grid(a.rows, a.n_kv, chunks);
  split_scores_kernel<G><<<grid, kThreads, 0, s>>>(a, w);
  LLMQ_CUDA_CHECK_LAUNCH();
  const size_t bytes = sizeof(float) * static_cast<size_t>(kThreads / (a.hd / 8)) * G * a.hd;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(split_pv_kernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  split_pv_kernel<G><<<grid, kThreads, bytes, s>>>(a, w);
  LLMQ_CUDA_CHECK_LAUNCH();
  split_combine_kernel<<<dim3(a.rows, a.n_q), a.hd, 0, s>>>(a, w, chunks);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// Split when the one-block-per-(row, kv head) grid would leave most SMs idle.
bool use_split(const AttentionArgs& a) {
  if (a.workspace == nullptr || a.rows > a.workspace_rows) return false;
  static const int sms = [] {
    int dev = 0, n = 0;
    LLMQ_CUDA_CHECK(cudaGetDevice(&dev));
    LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return a.rows * a.n_kv < 2 * sms;
}

}  // namespace

int attention_max_capacity(int n_q, int n_kv, int hd) {
  if (n_kv <= 0 || n_q % n_kv != 0 || !supported_head_dim(hd)) return 0;
  const int G = n_q / n_kv;
  const size_t fixed = smem_bytes(G, hd, 0);
  const size_t avail = static_cast<size_t>(max_dynamic_smem());
  return avail > fixed ? static_cast<int>((avail - fixed) / (sizeof(float) * G)) : 0;
}

size_t attention_workspace_floats(int rows, int n_q, int hd, int capacity) {
  const size_t rh = static_cast<size_t>(rows) * n_q, chunks = num_chunks(capacity);
  return rh * capacity + 2 * rh * chunks + rh * chunks * hd;
}

void attention(const AttentionArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  LLMQ_CHECK(supported_head_dim(a.hd), "attention: head_dim " << a.hd << " unsupported");
  LLMQ_CHECK(a.n_q % a.n_kv == 0, "attention: " << a.n_q << " heads over " << a.n_kv << " kv heads");
  const bool split = use_split(a);
  switch (a.n_q / a.n_kv) {
    case 1: return split ? launch_split<1>(a, s) : launch<1>(a, s);
    case 2: return split ? launch_split<2>(a, s) : launch<2>(a, s);
    case 4: return split ? launch_split<4>(a, s) : launch<4>(a, s);
    case 8: return split ? launch_split<8>(a, s) : launch<8>(a, s);
    default: LLMQ_CHECK(false, "attention: GQA group " << a.n_q / a.n_kv << " unsupported (1, 2, 4, 8)");
  }
}

}  // namespace llmq::gpu
