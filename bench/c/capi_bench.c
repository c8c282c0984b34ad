/* libgang's benchmarks, under mpirun (bench/capi.sh):
 *
 *   capi_bench DIR FIELD_MIB ROUNDS
 *
 * 1. Checkpoint of each rank's field of FIELD_MIB MiB (doubles) with gang_checkpoint,
 *    beside its limit: a plain sequential write of the same bytes to the same directory
 *    (write(2) in 8 MiB blocks, fsync, close), by every rank at once. Median of ROUNDS.
 * 2. One trainer pass (gang_trainer_step*: 16 optimizer steps, each with its allreduce) over
 *    65,536 rows x 32 float features per rank, linear model, batch 4096: fed through the Arrow C Data Interface as a FixedSizeList<float32>
 *    (read in place), through a plain row-major pointer (read in place), and through an
 *    Arrow struct of 32 float32 columns (gathered into rows: one copy), beside a memcpy of
 *    the features (what one copy costs). Median of ROUNDS.
 * Prints one "RESULT key value" line per figure (seconds) on rank 0. */
#define _POSIX_C_SOURCE 200809L
#include <gang.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static gang_t *g;

#define CHECK(call)                                                          \
    do {                                                                     \
        if ((call) != GANG_OK) {                                             \
            fprintf(stderr, "capi_bench: %s: %s\n", #call, gang_last_error(g)); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                    \
        }                                                                    \
    } while (0)

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[n / 2];
}

static void rel_s(struct ArrowSchema *s) { s->release = NULL; }
static void rel_a(struct ArrowArray *a) { a->release = NULL; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 4) {
        fprintf(stderr, "usage: capi_bench DIR FIELD_MIB ROUNDS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const char *dir = argv[1];
    size_t bytes = (size_t)atol(argv[2]) << 20;
    int rounds = atoi(argv[3]);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK(gang_init(MPI_COMM_WORLD, &g));
    double *t = malloc((size_t)rounds * sizeof *t);

    /* 1. Checkpoint against a plain sequential write with fsync. */
    double *field = malloc(bytes);
    for (size_t i = 0; i < bytes / sizeof *field; i++) field[i] = (double)i * 1e-3 + rank;
    char path[4096];
    snprintf(path, sizeof path, "%s/ckpt", dir);
    gang_checkpoint_t *ck;
    CHECK(gang_checkpoint_new(g, path, 1, &ck));
    int64_t shape[1] = {(int64_t)(bytes / sizeof *field)};
    CHECK(gang_checkpoint_region(ck, "field", field, GANG_F64, 1, shape, 1));
    /* Alternating, in an order that flips from round to round: the disk's state
     * (writeback of the previous write, the space freed by the pruned checkpoint or the
     * removed file) is on average the same for both. */
    double *tp = malloc((size_t)rounds * sizeof *tp);
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 2; k++) {
            int plain_now = (k + r) % 2; /* the order flips from round to round */
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (!plain_now) {
                CHECK(gang_checkpoint(ck, r + 1));
                t[r] = MPI_Wtime() - t0;
                continue;
            }
            snprintf(path, sizeof path, "%s/plain-%d.bin", dir, rank);
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) MPI_Abort(MPI_COMM_WORLD, 3);
            for (size_t off = 0; off < bytes;) {
                size_t n = bytes - off < (8u << 20) ? bytes - off : (8u << 20);
                ssize_t w = write(fd, (char *)field + off, n);
                if (w <= 0) MPI_Abort(MPI_COMM_WORLD, 4);
                off += (size_t)w;
            }
            fsync(fd);
            close(fd);
            MPI_Barrier(MPI_COMM_WORLD);
            tp[r] = MPI_Wtime() - t0;
            unlink(path);
        }
        if (rank == 0) printf("ROUND %d checkpoint_s %.3f plain_write_fsync_s %.3f\n", r, t[r], tp[r]);
    }
    double ckpt = median(t, rounds);
    double plain = median(tp, rounds);
    CHECK(gang_checkpoint_free(ck));
    free(field);

    /* 2. Feeding the trainer. */
    const int64_t rows = 65536, cols = 32;
    float *x = malloc((size_t)(rows * cols) * sizeof *x), *y = malloc((size_t)rows * sizeof *y);
    float *copy = malloc((size_t)(rows * cols) * sizeof *copy);
    float **columns = malloc((size_t)cols * sizeof *columns);
    for (int64_t c = 0; c < cols; c++) columns[c] = malloc((size_t)rows * sizeof **columns);
    unsigned s = 12345u + (unsigned)rank;
    for (int64_t i = 0; i < rows; i++) {
        float acc = 0;
        for (int64_t c = 0; c < cols; c++) {
            s = s * 1103515245u + 12345u;
            float v = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
            x[i * cols + c] = v;
            columns[c][i] = v;
            acc += v * (float)(c % 3);
        }
        y[i] = acc;
    }
    gang_trainer_t *tr;
    CHECK(gang_trainer_new(g, cols, "model=linear optimizer=sgd lr=0.01 batch=4096", &tr));
    char width[16];
    snprintf(width, sizeof width, "+w:%lld", (long long)cols);
    const void *vb[2] = {NULL, x}, *lb[1] = {NULL}, *yb[2] = {NULL, y};
    struct ArrowArray values = {rows * cols, 0, 0, 2, 0, vb, NULL, NULL, rel_a, NULL};
    struct ArrowArray *vk[1] = {&values};
    struct ArrowArray list = {rows, 0, 0, 1, 1, lb, vk, NULL, rel_a, NULL};
    struct ArrowSchema item = {"f", "item", NULL, 0, 0, NULL, NULL, rel_s, NULL};
    struct ArrowSchema *ik[1] = {&item};
    struct ArrowSchema list_s = {width, "x", NULL, 0, 1, ik, NULL, rel_s, NULL};
    struct ArrowArray ya = {rows, 0, 0, 2, 0, yb, NULL, NULL, rel_a, NULL};
    struct ArrowSchema ys = {"f", "y", NULL, 0, 0, NULL, NULL, rel_s, NULL};
    /* The struct of columns. */
    struct ArrowArray *col_arrays = malloc((size_t)cols * sizeof *col_arrays);
    struct ArrowArray **col_ptrs = malloc((size_t)cols * sizeof *col_ptrs);
    struct ArrowSchema **col_schemas = malloc((size_t)cols * sizeof *col_schemas);
    const void **col_bufs = malloc((size_t)(2 * cols) * sizeof *col_bufs);
    for (int64_t c = 0; c < cols; c++) {
        col_bufs[2 * c] = NULL;
        col_bufs[2 * c + 1] = columns[c];
        struct ArrowArray a = {rows, 0, 0, 2, 0, &col_bufs[2 * c], NULL, NULL, rel_a, NULL};
        col_arrays[c] = a;
        col_ptrs[c] = &col_arrays[c];
        col_schemas[c] = &item;
    }
    struct ArrowArray st = {rows, 0, 0, 1, cols, lb, col_ptrs, NULL, rel_a, NULL};
    struct ArrowSchema st_s = {"+s", "x", NULL, 0, cols, col_schemas, NULL, rel_s, NULL};

    double loss = 0, feed[4];
    const char *names[4] = {"arrow_fixed_size_list", "plain_row_major", "arrow_struct_columns", "memcpy_features"};
    /* The three ways of feeding alternate within each round (after one warm-up pass of
     * each), in an order that rotates from round to round, and each timed call follows the
     * same untimed copy of the features: every way finds the caches, and the kernels'
     * threads, in the same state. The memcpy is timed on its own afterwards. */
    double *tm = malloc((size_t)(4 * rounds) * sizeof *tm);
    for (int r = -1; r < rounds; r++) {
        for (int k = 0; k < 3; k++) {
            int mode = (k + r + 3) % 3;
            memcpy(copy, x, (size_t)(rows * cols) * sizeof *x);
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (mode == 0) CHECK(gang_trainer_step_arrow(tr, &list, &list_s, &ya, &ys, &loss));
            if (mode == 1) CHECK(gang_trainer_step(tr, x, rows, cols, GANG_ROW_MAJOR, y, NULL, &loss));
            if (mode == 2) CHECK(gang_trainer_step_arrow(tr, &st, &st_s, &ya, &ys, &loss));
            if (r >= 0) tm[mode * rounds + r] = MPI_Wtime() - t0;
        }
    }
    for (int r = 0; r < rounds; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        memcpy(copy, x, (size_t)(rows * cols) * sizeof *x);
        tm[3 * rounds + r] = MPI_Wtime() - t0;
    }
    for (int mode = 0; mode < 4; mode++) feed[mode] = median(tm + mode * rounds, rounds);
    if (rank == 0) {
        printf("RESULT ranks %d\n", size);
        printf("RESULT field_bytes_per_rank %zu\n", bytes);
        printf("RESULT checkpoint_s %.6f\n", ckpt);
        printf("RESULT plain_write_fsync_s %.6f\n", plain);
        for (int m = 0; m < 4; m++) printf("RESULT %s_s %.6f\n", names[m], feed[m]);
        printf("RESULT final_loss %.6g\n", loss);
    }
    CHECK(gang_trainer_free(tr));
    CHECK(gang_finalize(g));
    MPI_Finalize();
    return 0;
}
