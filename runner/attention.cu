// Causal GQA attention over the BF16 KV cache, for decode (one row per sequence) and prefill
// (many rows per sequence) alike: one block per (token row, kv head) computes the G = n_q /
// n_kv query heads that share that kv head, so each K/V row is read once for all of them.
// Scores for all visible positions live in shared memory (so the cache capacity is bounded by
// attention_max_capacity), softmax is exact (max, then exp), and P·V is split over position
// slices that are summed at the end. Rounding as model/llama.cc's flash-SDPA emulation.
//
// Each K/V row is read as 16-byte chunks of 8 bf16: hd/8 lanes cover one row, and the lane
// groups of a warp cover consecutive rows, so loads are coalesced for any hd in 8..256.
// Prefill re-reads K/V per query row (no query tiling yet): correct but O(T^2) L2 traffic.
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
    for (int g = 0; g < G; ++g) dot[g] = 0.0f;
    if (j < L) {
      float k8[8];
      unpack8(*reinterpret_cast<const uint4*>(a.k_cache + base + static_cast<int64_t>(j) * kv_dim + c * 8), k8);
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < 8; ++i) dot[g] += q[g * hd + c * 8 + i] * k8[i];
    }
    for (int o = chunks / 2; o > 0; o >>= 1)
      for (int g = 0; g < G; ++g) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], o);
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

  float acc[G][8];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  for (int j = slice; j < L; j += slices) {
    float v8[8];
    unpack8(*reinterpret_cast<const uint4*>(a.v_cache + base + static_cast<int64_t>(j) * kv_dim + c * 8), v8);
    for (int g = 0; g < G; ++g) {
      const float p = scores[g * a.capacity + j];
      for (int i = 0; i < 8; ++i) acc[g][i] += p * v8[i];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 8; ++i) partial[(slice * G + g) * hd + c * 8 + i] = acc[g][i];
  __syncthreads();
  for (int i = threadIdx.x; i < G * hd; i += kThreads) {
    float o = 0.0f;
    for (int sl = 0; sl < slices; ++sl) o += partial[sl * G * hd + i];
    const int g = i / hd;
    a.out[static_cast<int64_t>(r) * a.n_q * hd + (kvh * G) * hd + i] = f32_to_bf16(o * inv_sum[g]);
  }
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

}  // namespace

int attention_max_capacity(int n_q, int n_kv, int hd) {
  if (n_kv <= 0 || n_q % n_kv != 0 || !supported_head_dim(hd)) return 0;
  const int G = n_q / n_kv;
  const size_t fixed = smem_bytes(G, hd, 0);
  const size_t avail = static_cast<size_t>(max_dynamic_smem());
  return avail > fixed ? static_cast<int>((avail - fixed) / (sizeof(float) * G)) : 0;
}

void attention(const AttentionArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  LLMQ_CHECK(supported_head_dim(a.hd), "attention: head_dim " << a.hd << " unsupported");
  LLMQ_CHECK(a.n_q % a.n_kv == 0, "attention: " << a.n_q << " heads over " << a.n_kv << " kv heads");
  switch (a.n_q / a.n_kv) {
    case 1: return launch<1>(a, s);
    case 2: return launch<2>(a, s);
    case 4: return launch<4>(a, s);
    case 8: return launch<8>(a, s);
    default: LLMQ_CHECK(false, "attention: GQA group " << a.n_q / a.n_kv << " unsupported (1, 2, 4, 8)");
  }
}

}  // namespace llmq::gpu
