// Sums of per-row values (losses, correct predictions) in double, in a fixed order.
#include "common.cuh"

// partial[s] = sum of v[r] over the rows of segment s (seg rows, in order), in double.
// Threads: ceil(n / seg).
GANG_KERNEL gang_sum_rows_f64(const float* __restrict__ v, int n, int seg, double* __restrict__ partial) {
    i64 s = GANG_THREAD;
    if (s >= ((i64)n + seg - 1) / seg) return;
    i64 r0 = s * seg, r1 = r0 + seg < n ? r0 + seg : n;
    double acc = 0.0;
    for (i64 r = r0; r < r1; ++r) acc += (double)v[r];
    partial[s] = acc;
}

// *acc += the count partial sums, in order: the running total of an epoch stays on the
// device and is read once at its end. Threads: 1.
GANG_KERNEL gang_accumulate_f64(const double* __restrict__ partial, int count, double* __restrict__ acc) {
    if (GANG_THREAD != 0) return;
    double sum = 0.0;
    for (int s = 0; s < count; ++s) sum += partial[s];
    *acc += sum;
}
