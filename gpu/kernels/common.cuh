// Shared by every kernel of gang-gpu.
//
// Each kernel is a plain function of its global thread index: no shared memory, no
// atomics, no __syncthreads. A thread's result depends only on its inputs, so every
// kernel is deterministic (reductions run in two passes over fixed segments, each in a
// fixed order), and the same sources compile as host C++ (GANG_HOST_BUILD), where the
// host runner calls the kernel once per thread index: the CPU twin of every kernel.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define GANG_KERNEL extern "C" __global__ void
#define GANG_INLINE __device__ __forceinline__
#define GANG_THREAD ((long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x)
#else
#include <math.h>
// The thread index of the current call (set by the host runner before each call).
extern "C" long long gang_host_thread(void);
#define GANG_KERNEL extern "C" void
#define GANG_INLINE static inline
#define GANG_THREAD gang_host_thread()
#define __restrict__ __restrict
#endif

typedef long long i64;
