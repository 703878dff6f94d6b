// Programmatic dependent launch (sm_90+): a kernel launched with launch_pdl may be scheduled
// while the kernel before it on the stream is still finishing, so a decode step's ~200 small
// launches stop paying launch latency and block scheduling one after the other. Every kernel
// launched this way calls pdl_wait() before it touches anything another kernel writes: it
// returns once the previous grid has completed and its writes are visible; then it lets the
// next kernel's blocks be scheduled onto free SMs (they wait in turn, and a grid's dependents
// launch only once all its blocks run, so waiting blocks never keep it from finishing). The
// GEMVs issue their first weight loads before it: kernels that write weights (load time, the
// GPU quantizer's updates) are plain launches, which release their dependents only when done.
// A block triggers only after its wait returns (or by exiting), so a kernel starts only once
// the blocks of the one before it have waited, that is once the one before that has completed:
// what kernels two or more launches back wrote is in memory when a kernel starts, as long as
// the kernels between do not all exit without waiting. Decode attention reads its older K/V
// rows before pdl_wait on that ground (AttentionArgs::history_settled in runner/kernels.h).
// Below sm_90 the launch attribute is ignored and pdl_wait compiles to nothing; in a CUDA
// graph capture the dependency is kept as a programmatic edge.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include <utility>

#include "runner/cuda_check.h"

namespace llmq::gpu {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Loads of what the kernel before writes, for kernels that issue other loads before
// pdl_wait: coherent (not ld.global.nc, whose contract is data read-only for the kernel's whole
// life, which a kernel overlapping its predecessor does not have) and volatile, so neither the
// compiler nor ptxas moves them above the wait.
__device__ __forceinline__ uint4 load_after_wait(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t load_after_wait(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// A weight load for kernels that issue their first ones before pdl_wait (weights are written
// only by plain launches, which release dependents at completion): L1 bypassed, whole 256-byte
// L2 sectors requested (the data is read once). Volatile so that the loads stay in program
// order before pdl_wait (a plain asm may be moved past it).
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Launches kernel with programmatic dependent launch; cluster_x > 0 also launches it in
// thread-block clusters of cluster_x blocks along x.
template <class... Params, class... Args>
void launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, int cluster_x,
                        cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = static_cast<unsigned>(cluster_x);
  attr[1].val.clusterDim.y = 1;
  attr[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = cluster_x > 0 ? 2 : 1;
  LLMQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  launch_pdl_cluster(kernel, grid, block, smem, 0, stream, std::forward<Args>(args)...);
}

}  // namespace llmq::gpu
