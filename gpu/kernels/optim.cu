// Optimizer steps on the flat parameter buffer, as gang-kernels' OptimizerState (the
// update rules of torch.optim.SGD and AdamW), with the gradient scaled by `scale`
// (1 / the gang's rows of the step). Elementwise. Threads: len.
#include "common.cuh"

// p -= lr (scale g + wd p).
GANG_KERNEL gang_sgd(float* __restrict__ p, const float* __restrict__ g, int len, float lr, float wd,
                     float scale) {
    i64 i = GANG_THREAD;
    if (i >= len) return;
    p[i] -= lr * (scale * g[i] + wd * p[i]);
}

// b = momentum b + (scale g + wd p); p -= lr b.
GANG_KERNEL gang_sgd_momentum(float* __restrict__ p, float* __restrict__ b, const float* __restrict__ g,
                              int len, float lr, float momentum, float wd, float scale) {
    i64 i = GANG_THREAD;
    if (i >= len) return;
    float bi = momentum * b[i] + (scale * g[i] + wd * p[i]);
    b[i] = bi;
    p[i] -= lr * bi;
}

// p *= shrink; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= step_size m / (sqrt(v) inv_sqrt_bc2 + eps), with g = scale * grad and the bias
// corrections (step_size = lr / (1 - b1^t), inv_sqrt_bc2 = 1 / sqrt(1 - b2^t)) computed on
// the host in double, as on the CPU.
GANG_KERNEL gang_adam(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                      const float* __restrict__ g, int len, float step_size, float inv_sqrt_bc2,
                      float shrink, float beta1, float beta2, float eps, float scale) {
    i64 i = GANG_THREAD;
    if (i >= len) return;
    float gi = scale * g[i];
    float pi = p[i] * shrink;
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
}
