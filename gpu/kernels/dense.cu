// Dense layers as PyTorch's nn.Linear: weight [out, in] row-major, bias [out].
#include "common.cuh"

// z[r, o] = b[o] + sum_j x[r, j] w[o, j] (j in order), then max(z, 0) when relu != 0.
// Threads: n * out.
GANG_KERNEL gang_dense_forward(const float* __restrict__ x, const float* __restrict__ w,
                               const float* __restrict__ b, int n, int in, int out, int relu,
                               float* __restrict__ z) {
    i64 i = GANG_THREAD;
    if (i >= (i64)n * out) return;
    i64 r = i / out;
    int o = (int)(i % out);
    const float* xr = x + r * in;
    const float* wo = w + (i64)o * in;
    float acc = 0.0f;
    for (int j = 0; j < in; ++j) acc = fmaf(xr[j], wo[j], acc);
    float v = acc + b[o];
    z[i] = (relu && !(v > 0.0f)) ? 0.0f : v;
}

// The weight and bias gradient of a layer, one partial sum per segment of `seg` rows:
// partial[s, e] for e < out * in is sum_{r in segment s} d[r, o] x[r, j] with
// (o, j) = (e / in, e % in); for e = out * in + o it is sum_r d[r, o]. Rows in order.
// Threads: segments * (out * in + out), segments = ceil(n / seg).
GANG_KERNEL gang_dense_grad_partial(const float* __restrict__ d, const float* __restrict__ x, int n,
                                    int in, int out, int seg, float* __restrict__ partial) {
    i64 len = (i64)out * in + out;
    i64 segments = ((i64)n + seg - 1) / seg;
    i64 i = GANG_THREAD;
    if (i >= segments * len) return;
    i64 s = i / len, e = i % len;
    i64 r0 = s * seg, r1 = r0 + seg < n ? r0 + seg : n;
    float acc = 0.0f;
    if (e < (i64)out * in) {
        int o = (int)(e / in), j = (int)(e % in);
        for (i64 r = r0; r < r1; ++r) acc = fmaf(d[r * out + o], x[r * in + j], acc);
    } else {
        int o = (int)(e - (i64)out * in);
        for (i64 r = r0; r < r1; ++r) acc += d[r * out + o];
    }
    partial[i] = acc;
}

// out[e] = sum_s partial[s, e], segments in order (the second pass of a reduction).
// Threads: len.
GANG_KERNEL gang_sum_segments(const float* __restrict__ partial, int segments, int len,
                              float* __restrict__ out) {
    i64 e = GANG_THREAD;
    if (e >= len) return;
    float acc = 0.0f;
    for (int s = 0; s < segments; ++s) acc += partial[(i64)s * len + e];
    out[e] = acc;
}

// The gradient at a layer's input through the ReLU before it:
// dprev[r, j] = (a[r, j] > 0) ? sum_o d[r, o] w[o, j] : 0, with a the layer's input
// (the previous layer's activation after its ReLU). Threads: n * in.
GANG_KERNEL gang_dense_backward_input(const float* __restrict__ d, const float* __restrict__ w,
                                      const float* __restrict__ a, int n, int in, int out,
                                      float* __restrict__ dprev) {
    i64 i = GANG_THREAD;
    if (i >= (i64)n * in) return;
    i64 r = i / in;
    int j = (int)(i % in);
    const float* dr = d + r * out;
    float acc = 0.0f;
    for (int o = 0; o < out; ++o) acc = fmaf(dr[o], w[(i64)o * in + j], acc);
    dprev[i] = a[i] > 0.0f ? acc : 0.0f;
}
