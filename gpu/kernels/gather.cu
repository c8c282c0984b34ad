// The rows of a step's batch, gathered from the shard resident on the device.
#include "common.cuh"

// dst[r, :] = src[rows[r], :] for r < n; f floats per row. Threads: n * f.
GANG_KERNEL gang_gather_rows(const float* __restrict__ src, const i64* __restrict__ rows, int n, int f,
                             float* __restrict__ dst) {
    i64 i = GANG_THREAD;
    if (i >= (i64)n * f) return;
    i64 r = i / f, j = i % f;
    dst[i] = src[rows[r] * f + j];
}

// dst[r] = src[rows[r]] for r < n. Threads: n.
GANG_KERNEL gang_gather_values(const float* __restrict__ src, const i64* __restrict__ rows, int n,
                               float* __restrict__ dst) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    dst[r] = src[rows[r]];
}
