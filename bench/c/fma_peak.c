/* Peak f32 FLOP/s of this CPU, T threads at once, in registers:
 *
 *   cc -O2 -march=native -pthread -o fma_peak fma_peak.c
 *       fused multiply-add on the widest vectors -march=native allows (AVX-512 or
 *       AVX2+FMA): the hardware's peak, the limit of the compute-bound training figures
 *       in bench/train.sh;
 *   cc -O2 -pthread -o sse_peak fma_peak.c
 *       baseline x86-64 (SSE, multiply then add, not fused): the peak of code built the
 *       way gang's kernels are (rustc's default target, no fast-math contraction).
 *
 *   ./fma_peak T        prints {"threads": T, "gflops": G, "isa": "..."}
 *
 * Best of 5 runs of about 0.3 s each; every thread does the same work, the time is the
 * slowest thread's. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ACC 12 /* independent chains: > FMA latency (4) x FMA ports (2), fits the registers */

#if defined(__AVX512F__)
typedef __m512 vec;
#define WIDTH 16
#define ISA "avx512-fma"
#define SET1 _mm512_set1_ps
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define HSUM(v) _mm512_reduce_add_ps(v)
#elif defined(__FMA__)
typedef __m256 vec;
#define WIDTH 8
#define ISA "avx2-fma"
#define SET1 _mm256_set1_ps
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
static float HSUM(__m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#else
/* Baseline x86-64 (what rustc targets by default, and so gang's kernels): SSE, a
 * multiply then an add, never fused. 12 chains of 6 cycles (3 + 3) on 2 + 2 pipes. */
typedef __m128 vec;
#define WIDTH 4
#define ISA "sse-mul-add"
#define SET1 _mm_set1_ps
#define FMA(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
static float HSUM(__m128 v) {
    float f[4];
    _mm_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3];
}
#endif

static long iters = 20000000;
static volatile float sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *work(void *arg) {
    double *seconds = arg;
    vec acc[ACC];
    for (int k = 0; k < ACC; k++) acc[k] = SET1(0.001f * k);
    vec m = SET1(0.9999f), a = SET1(1e-6f);
    double t = now();
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int k = 0; k < ACC; k++) acc[k] = FMA(acc[k], m, a);
    }
    *seconds = now() - t;
    float s = 0;
    for (int k = 0; k < ACC; k++) s += HSUM(acc[k]);
    sink = s;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: fma_peak THREADS\n");
        return 2;
    }
    pthread_t tid[256];
    double secs[256];
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, work, &secs[i]);
        double slowest = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(tid[i], NULL);
            if (secs[i] > slowest) slowest = secs[i];
        }
        double flops = 2.0 * WIDTH * ACC * (double)iters * threads;
        if (flops / slowest > best) best = flops / slowest;
    }
    printf("{\"threads\": %d, \"gflops\": %.2f, \"isa\": \"%s\"}\n", threads, best / 1e9, ISA);
    return 0;
}
