/* The limit for gang's Comm: the same barrier and allreduce loops in plain C over MPI.
 *
 * Usage: raw_mpi_comm OUT.json
 * Method (identical in bench/comm_bench.rs): per operation and size, a warm-up, then
 * BATCHES timed batches of `iters` back-to-back calls between barriers; the time of a batch
 * is the slowest rank's, divided by iters; the figure is the median over the batches.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCHES 7

static size_t iters_for(size_t bytes) {
    size_t it = (size_t)(256u << 20) / (bytes < 64 ? 64 : bytes);
    if (it < 5) it = 5;
    if (it > 20000) it = 20000;
    return it;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2) {
        if (rank == 0) fprintf(stderr, "usage: raw_mpi_comm OUT.json\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    FILE *out = NULL;
    if (rank == 0) {
        out = fopen(argv[1], "w");
        if (!out) { perror(argv[1]); MPI_Abort(MPI_COMM_WORLD, 2); }
    }
    double t[BATCHES];

    /* Barrier. */
    size_t iters = 20000;
    for (size_t i = 0; i < iters / 10; i++) MPI_Barrier(MPI_COMM_WORLD);
    for (int b = 0; b < BATCHES; b++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (size_t i = 0; i < iters; i++) MPI_Barrier(MPI_COMM_WORLD);
        double mine = (MPI_Wtime() - t0) / (double)iters, slowest;
        MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        t[b] = slowest;
    }
    if (rank == 0)
        fprintf(out, "{\"impl\":\"c\",\"op\":\"barrier\",\"bytes\":0,\"ranks\":%d,\"iters\":%zu,\"seconds\":%.9e}\n",
                size, iters, median(t, BATCHES));

    /* Allreduce of f64 buffers in place, 8 B .. 64 MiB. */
    static const size_t sizes[] = {8, 64, 512, 4096, 32768, 262144, 2097152, 16777216, 67108864};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t bytes = sizes[s];
        size_t n = bytes / sizeof(double);
        double *buf = malloc(bytes);
        for (size_t i = 0; i < n; i++) buf[i] = (double)(i % 17);
        iters = iters_for(bytes);
        for (size_t i = 0; i < iters / 10 + 1; i++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        for (int b = 0; b < BATCHES; b++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (size_t i = 0; i < iters; i++)
                MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            double mine = (MPI_Wtime() - t0) / (double)iters, slowest;
            MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            t[b] = slowest;
        }
        if (rank == 0)
            fprintf(out, "{\"impl\":\"c\",\"op\":\"allreduce_f64\",\"bytes\":%zu,\"ranks\":%d,\"iters\":%zu,\"seconds\":%.9e}\n",
                    bytes, size, iters, median(t, BATCHES));
        free(buf);
    }
    if (rank == 0) fclose(out);
    MPI_Finalize();
    return 0;
}
