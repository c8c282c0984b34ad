// The heads: per row, the loss, d loss / d logits and whether the prediction is right.
// t holds the targets as floats (class ids are exact below 2^24).
#include "common.cuh"

// 0.5 (z - t)^2. Threads: n.
GANG_KERNEL gang_head_regression(const float* __restrict__ z, const float* __restrict__ t, int n,
                                 float* __restrict__ d, float* __restrict__ loss,
                                 float* __restrict__ correct) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    float diff = z[r] - t[r];
    d[r] = diff;
    loss[r] = 0.5f * diff * diff;
    correct[r] = 0.0f;
}

// Log-loss of the logit z against the probability t, as gang-kernels' binary_row:
// t softplus(-z) + (1 - t) softplus(z), derivative sigmoid(z) - t. Threads: n.
GANG_KERNEL gang_head_binary(const float* __restrict__ z, const float* __restrict__ t, int n,
                             float* __restrict__ d, float* __restrict__ loss,
                             float* __restrict__ correct) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    float zr = z[r], tr = t[r];
    float e = expf(-fabsf(zr));
    float l1p = log1pf(e);
    loss[r] = l1p + tr * fmaxf(-zr, 0.0f) + (1.0f - tr) * fmaxf(zr, 0.0f);
    float inv = 1.0f / (1.0f + e);
    float p = zr >= 0.0f ? inv : e * inv;
    d[r] = p - tr;
    correct[r] = ((zr >= 0.0f) == (tr >= 0.5f)) ? 1.0f : 0.0f;
}

// Softmax cross-entropy of k logits per row against the class t: d = softmax(z) -
// onehot(t), loss = log(sum exp(z - max)) - (z_t - max), correct when the first arg-max
// is the class. Threads: n.
GANG_KERNEL gang_head_softmax(const float* __restrict__ z, const float* __restrict__ t, int n, int k,
                              float* __restrict__ d, float* __restrict__ loss,
                              float* __restrict__ correct) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    const float* zr = z + r * k;
    float* dr = d + r * k;
    int best = 0;
    for (int c = 1; c < k; ++c)
        if (zr[c] > zr[best]) best = c;
    float m = zr[best];
    float s = 0.0f;
    for (int c = 0; c < k; ++c) {
        float e = expf(zr[c] - m);
        dr[c] = e;
        s += e;
    }
    float inv = 1.0f / s;
    for (int c = 0; c < k; ++c) dr[c] *= inv;
    int label = (int)t[r];
    dr[label] -= 1.0f;
    loss[r] = logf(s) - (zr[label] - m);
    correct[r] = best == label ? 1.0f : 0.0f;
}

// Probabilities in place: the sigmoid of each logit. Threads: n.
GANG_KERNEL gang_sigmoid(float* __restrict__ z, int n) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    float zr = z[r];
    float e = expf(-fabsf(zr));
    z[r] = zr >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// Probabilities in place: the softmax of each row of k logits. Threads: n.
GANG_KERNEL gang_softmax_rows(float* __restrict__ z, int n, int k) {
    i64 r = GANG_THREAD;
    if (r >= n) return;
    float* zr = z + r * k;
    float m = zr[0];
    for (int c = 1; c < k; ++c)
        if (zr[c] > m) m = zr[c];
    float s = 0.0f;
    for (int c = 0; c < k; ++c) {
        zr[c] = expf(zr[c] - m);
        s += zr[c];
    }
    float inv = 1.0f / s;
    for (int c = 0; c < k; ++c) zr[c] *= inv;
}
