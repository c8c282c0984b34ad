/*
 * heat2d: 2-D heat diffusion on an N x N grid, the rows split across the MPI ranks (halo
 * exchange with MPI_Sendrecv), that uses libgang on its own communicator to
 *   - train a surrogate of its field in situ (an MLP from (x, y) to u) every K steps, fed
 *     through the Arrow C Data Interface without copying,
 *   - write the field as a Parquet snapshot every P steps, committed exactly once,
 *   - checkpoint the field (and the surrogate's state) every C steps and restart from the
 *     newest checkpoint.
 *
 *   mpicc -std=c99 -O2 heat2d.c $(pkg-config --cflags --libs gang) -o heat2d
 *   gang run -n 4 --max-restarts 1 -- ./heat2d --out heat2d-out
 *
 * Options: --n N (64), --steps S (200), --train-every K (20), --snapshot-every P (50),
 * --checkpoint-every C (25), --out DIR (heat2d-out), --no-gang (the stencil alone, for
 * measuring what gang adds), --time (print the mean time of a step).
 * At the end rank 0 prints "field digest <hex>": an FNV-1a hash of the whole field, the
 * same for the same N and steps whatever the restarts.
 */
#include <gang.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gang_t *g = NULL;

/* Any gang error stops the whole gang: gang_fail records it for `gang run` and aborts. */
#define CHECK(call)                                                        \
    do {                                                                   \
        if ((call) != GANG_OK) {                                           \
            char msg_[1024];                                               \
            gang_last_error_copy(g, msg_, sizeof msg_, NULL);              \
            gang_fail(g, msg_);                                            \
        }                                                                  \
    } while (0)

static void noop_release_schema(struct ArrowSchema *s) { s->release = NULL; }
static void noop_release_array(struct ArrowArray *a) { a->release = NULL; }

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int main(int argc, char **argv) {
    long n = 64, steps = 200, train_every = 20, snap_every = 50, ckpt_every = 25;
    const char *out = "heat2d-out";
    int use_gang = 1, timing = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-gang")) use_gang = 0;
        else if (!strcmp(a, "--time")) timing = 1;
        else if (v && !strcmp(a, "--n")) n = atol(argv[++i]);
        else if (v && !strcmp(a, "--steps")) steps = atol(argv[++i]);
        else if (v && !strcmp(a, "--train-every")) train_every = atol(argv[++i]);
        else if (v && !strcmp(a, "--snapshot-every")) snap_every = atol(argv[++i]);
        else if (v && !strcmp(a, "--checkpoint-every")) ckpt_every = atol(argv[++i]);
        else if (v && !strcmp(a, "--out")) out = argv[++i];
        else {
            fprintf(stderr, "heat2d: unknown or incomplete option %s (see the comment at the top of heat2d.c)\n", a);
            return 2;
        }
    }

    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (n < 3 || n < size) {
        if (rank == 0) fprintf(stderr, "heat2d: --n %ld is too small for %d ranks\n", n, size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    /* Rows [r0, r0 + nloc) of the grid are this rank's, with a halo row above and below. */
    long r0 = n * rank / size, nloc = n * (rank + 1) / size - r0;
    double *u = calloc((size_t)(nloc + 2) * n, sizeof *u);
    double *un = calloc((size_t)(nloc + 2) * n, sizeof *un);
    if (!u || !un) MPI_Abort(MPI_COMM_WORLD, 3);
    for (long i = 1; i <= nloc; i++)
        if (r0 + i - 1 == 0)
            for (long j = 0; j < n; j++) u[i * n + j] = 1.0; /* the hot edge */
    memcpy(un, u, (size_t)(nloc + 2) * n * sizeof *u);
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;

    char path[4096];
    gang_checkpoint_t *ck = NULL;
    gang_trainer_t *tr = NULL;
    long first = 1;
    size_t pts = (size_t)nloc * n;
    float *xy = malloc(pts * 2 * sizeof *xy), *target = malloc(pts * sizeof *target);
    int64_t *col_i = malloc(pts * sizeof *col_i), *col_j = malloc(pts * sizeof *col_j);
    int64_t *col_step = malloc(pts * sizeof *col_step);
    double *col_u = malloc(pts * sizeof *col_u);
    if (use_gang) {
        CHECK(gang_init(MPI_COMM_WORLD, &g));
        snprintf(path, sizeof path, "%s/checkpoints", out);
        CHECK(gang_checkpoint_new(g, path, 2, &ck));
        /* The field without its halo rows: this rank's shard of the checkpoint. */
        int64_t shape[2] = {nloc, n};
        CHECK(gang_checkpoint_region(ck, "u", u + n, GANG_F64, 2, shape, 1));
        /* The surrogate's state (model, Adam's moments, step count) goes into the same
         * checkpoints, so a restarted run trains on from where it stopped. */
        CHECK(gang_trainer_new(g, 2, "model=mlp:32 optimizer=adam lr=0.01 batch=512 seed=7", &tr));
        CHECK(gang_trainer_checkpoint(tr, ck));
        int64_t step = 0;
        int found = 0;
        CHECK(gang_restart(ck, &step, &found));
        if (found) {
            first = step + 1;
            if (rank == 0) printf("heat2d: restarted from the checkpoint of step %lld\n", (long long)step);
        }
    }
    for (long i = 0; i < nloc; i++)
        for (long j = 0; j < n; j++) {
            size_t k = (size_t)i * n + j;
            xy[2 * k] = (float)(r0 + i) / (float)(n - 1);
            xy[2 * k + 1] = (float)j / (float)(n - 1);
            col_i[k] = r0 + i;
            col_j[k] = j;
        }

    /* The surrogate's features as an Arrow FixedSizeList<float32>[2] over xy: no copy. */
    const void *xy_buffers[2] = {NULL, xy}, *list_buffers[1] = {NULL}, *y_buffers[2] = {NULL, target};
    struct ArrowArray xy_values = {(int64_t)pts * 2, 0, 0, 2, 0, xy_buffers, NULL, NULL, noop_release_array, NULL};
    struct ArrowArray *xy_children[1] = {&xy_values};
    struct ArrowArray features = {(int64_t)pts, 0, 0, 1, 1, list_buffers, xy_children, NULL, noop_release_array, NULL};
    struct ArrowSchema f32_schema = {"f", "item", NULL, 0, 0, NULL, NULL, noop_release_schema, NULL};
    struct ArrowSchema *f32_children[1] = {&f32_schema};
    struct ArrowSchema features_schema = {"+w:2", "xy", NULL, 0, 1, f32_children, NULL, noop_release_schema, NULL};
    struct ArrowArray labels = {(int64_t)pts, 0, 0, 2, 0, y_buffers, NULL, NULL, noop_release_array, NULL};
    struct ArrowSchema labels_schema = {"f", "u", NULL, 0, 0, NULL, NULL, noop_release_schema, NULL};

    double t_steps = 0.0;
    for (long s = first; s <= steps; s++) {
        double t0 = MPI_Wtime();
        MPI_Sendrecv(u + n, (int)n, MPI_DOUBLE, up, 0, u + (nloc + 1) * n, (int)n, MPI_DOUBLE, down, 0,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(u + nloc * n, (int)n, MPI_DOUBLE, down, 1, u, (int)n, MPI_DOUBLE, up, 1, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        for (long i = 1; i <= nloc; i++) {
            long gi = r0 + i - 1;
            for (long j = 0; j < n; j++) {
                double *c = u + i * n + j;
                if (gi == 0 || gi == n - 1 || j == 0 || j == n - 1) un[i * n + j] = *c;
                else un[i * n + j] = *c + 0.2 * (c[-n] + c[n] + c[-1] + c[1] - 4.0 * *c);
            }
        }
        memcpy(u + n, un + n, (size_t)nloc * n * sizeof *u);
        if (use_gang) CHECK(gang_step(g, s, steps));
        t_steps += MPI_Wtime() - t0;
        if (!use_gang) continue;

        if (s % train_every == 0) {
            for (size_t k = 0; k < pts; k++) target[k] = (float)u[n + k];
            double loss = 0.0;
            CHECK(gang_trainer_step_arrow(tr, &features, &features_schema, &labels, &labels_schema, &loss));
            if (rank == 0) printf("heat2d: step %ld surrogate loss %.6g\n", s, loss);
        }
        if (s % snap_every == 0) {
            for (size_t k = 0; k < pts; k++) {
                col_u[k] = u[n + k];
                col_step[k] = s;
            }
            const char *names[4] = {"step", "i", "j", "u"};
            int types[4] = {GANG_I64, GANG_I64, GANG_I64, GANG_F64};
            const void *cols[4] = {col_step, col_i, col_j, col_u};
            int written = 0;
            snprintf(path, sizeof path, "%s/snapshots/step-%06ld", out, s);
            CHECK(gang_write_parquet(g, path, (int64_t)pts, 4, names, types, cols, &written));
            if (rank == 0 && !written) printf("heat2d: snapshot of step %ld was already committed\n", s);
        }
        if (s % ckpt_every == 0) CHECK(gang_checkpoint(ck, s));
    }

    /* The whole field's digest, rank by rank in order. */
    uint64_t mine = fnv1a(14695981039346656037ULL, u + n, (size_t)nloc * n * sizeof *u);
    uint64_t *all = rank == 0 ? malloc((size_t)size * sizeof *all) : NULL;
    MPI_Gather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    double t_max = 0.0;
    MPI_Reduce(&t_steps, &t_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("heat2d: field digest %016llx\n", (unsigned long long)fnv1a(14695981039346656037ULL, all,
                                                                           (size_t)size * sizeof *all));
        if (timing && steps >= first) printf("heat2d: %.3f us per step\n", 1e6 * t_max / (double)(steps - first + 1));
        free(all);
    }
    if (use_gang) {
        snprintf(path, sizeof path, "%s/surrogate.safetensors", out);
        CHECK(gang_trainer_save(tr, path));
        CHECK(gang_checkpoint_free(ck));
        CHECK(gang_trainer_free(tr));
        CHECK(gang_finalize(g));
    }
    free(u);
    free(un);
    free(xy);
    free(target);
    free(col_i);
    free(col_j);
    free(col_step);
    free(col_u);
    MPI_Finalize();
    return 0;
}
