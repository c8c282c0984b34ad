/* Every bad-argument and wrong-order path of the C API returns its code and a message, and
 * the good paths around them work. Run by capi/tests/c_api.rs under mpirun -n 2:
 *   bad_args SCRATCH_DIR
 * Prints one "ok" line per check and "bad_args: N checks, F failures"; exits 1 on failures. */
#include <gang.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failures = 0, rank = 0;

static void expect(int rc, int want, int also, const char *msg, const char *what, int line) {
    checks++;
    int code_ok = rc == want || (also >= 0 && rc == also);
    int msg_ok = want == GANG_OK || (msg != NULL && msg[0] != '\0');
    if (!code_ok || !msg_ok) {
        fprintf(stderr, "FAIL line %d: %s returned %d (expected %d), message \"%s\"\n", line, what, rc, want,
                msg ? msg : "(null)");
        failures++;
    } else if (want != GANG_OK && rank == 0) {
        printf("ok %s -> %d: %s\n", what, rc, msg);
    }
}

#define EXPECT(call, want, h) \
    do { int rc_ = (call); expect(rc_, want, -1, gang_last_error(h), #call, __LINE__); } while (0)
#define EXPECT2(call, want, also, h) \
    do { int rc_ = (call); expect(rc_, want, also, gang_last_error(h), #call, __LINE__); } while (0)
#define TRUE(cond) \
    do { checks++; if (!(cond)) { fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond); failures++; } } while (0)

static void release_schema(struct ArrowSchema *s) { s->release = NULL; }
static void release_array(struct ArrowArray *a) { a->release = NULL; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (argc != 2) {
        fprintf(stderr, "usage: bad_args SCRATCH_DIR\n");
        return 2;
    }
    char dir[2048], path[4096];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    TRUE(strcmp(gang_mpi_library(), GANG_MPI_LIBRARY) == 0);
    TRUE(strcmp(gang_version(), "0.1.0") == 0);

    /* Init. */
    gang_t *g = (gang_t *)0x1;
    int r = -1, size = -1;
    EXPECT(gang_init(MPI_COMM_WORLD, NULL), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_init(MPI_COMM_NULL, &g), GANG_ERR_ARGUMENT, NULL);
    TRUE(g == NULL);
    EXPECT(gang_rank(NULL, &r), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_barrier(NULL), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_init(MPI_COMM_WORLD, &g), GANG_OK, NULL);
    EXPECT(gang_rank(g, NULL), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_rank(g, &r), GANG_OK, g);
    EXPECT(gang_size(g, &size), GANG_OK, g);
    TRUE(r == rank && size >= 1);

    /* The message copy for Fortran: cut to fit, NUL-terminated, with the full length. */
    EXPECT(gang_allreduce_f64(g, NULL, 4, GANG_SUM), GANG_ERR_ARGUMENT, g);
    char small[8];
    size_t needed = 0;
    EXPECT(gang_last_error_copy(g, small, sizeof small, &needed), GANG_OK, g);
    TRUE(strlen(small) == 7 && needed == strlen(gang_last_error(g)) && strncmp(small, "gang: r", 7) == 0);
    TRUE(strstr(gang_last_error(g), "rank ") != NULL && strstr(gang_last_error(g), "buf is NULL") != NULL);
    EXPECT(gang_last_error_copy(g, NULL, 4, NULL), GANG_ERR_ARGUMENT, NULL);

    /* Collectives. */
    double buf[4] = {1, 2, 3, 4};
    EXPECT(gang_allreduce_f64(g, buf, -1, GANG_SUM), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_allreduce_f64(g, buf, 4, 99), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_allreduce_f64(g, buf, 4, GANG_SUM), GANG_OK, g);
    TRUE(buf[0] == size && buf[3] == 4.0 * size);
    float fb[2] = {(float)rank, 1};
    EXPECT(gang_allreduce_f32(g, fb, 2, GANG_MAX), GANG_OK, g);
    TRUE(fb[0] == (float)(size - 1) && fb[1] == 1.0f);
    EXPECT(gang_barrier(g), GANG_OK, g);
    EXPECT(gang_step(g, 1, 10), GANG_OK, g);

    /* Checkpoints. */
    gang_checkpoint_t *ck = NULL;
    snprintf(path, sizeof path, "%s/ckpt", dir);
    EXPECT(gang_checkpoint_new(g, NULL, 1, &ck), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_new(g, "", 1, &ck), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_new(g, path, 0, &ck), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_new(g, path, 2, NULL), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_new(g, path, 2, &ck), GANG_OK, g);
    int64_t step = -7;
    int found = -1;
    EXPECT(gang_checkpoint(ck, 1), GANG_ERR_STATE, g);
    EXPECT(gang_restart(ck, &step, &found), GANG_ERR_STATE, g);
    double field[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3}, bad_shape[2] = {2, -3};
    EXPECT(gang_checkpoint_region(NULL, "f", field, GANG_F64, 2, shape, 1), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_checkpoint_region(ck, NULL, field, GANG_F64, 2, shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "", field, GANG_F64, 2, shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", NULL, GANG_F64, 2, shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", field, 42, 2, shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F64, 2, bad_shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F64, 2, NULL, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", (char *)field + 1, GANG_F64, 2, shape, 1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F64, 2, shape, 1), GANG_OK, g);
    EXPECT(gang_restart(ck, NULL, &found), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_restart(ck, &step, NULL), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_restart(ck, &step, &found), GANG_OK, g);
    TRUE(found == 0 && step == -7);
    EXPECT(gang_checkpoint(ck, -1), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_checkpoint(NULL, 1), GANG_ERR_ARGUMENT, NULL);
    field[0] = 100 + rank;
    EXPECT(gang_checkpoint(ck, 3), GANG_OK, g);
    field[0] = -1;
    field[5] = -1;
    EXPECT(gang_restart(ck, &step, &found), GANG_OK, g);
    TRUE(found == 1 && step == 3 && field[0] == 100 + rank && field[5] == 6);
    /* A damaged newest checkpoint is passed over for the one before: rank 0 flips bytes in
     * the data of its shard of step 4 (the size stays; only the checksum can tell). */
    field[0] = -5;
    EXPECT(gang_checkpoint(ck, 4), GANG_OK, g);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char shard[4200];
        snprintf(shard, sizeof shard, "%s/ckpt/step-00000004/rank-0.safetensors", dir);
        FILE *f = fopen(shard, "r+b");
        TRUE(f != NULL);
        if (f) {
            fseek(f, -8, SEEK_END);
            fwrite("garbage!", 1, 8, f);
            fclose(f);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    EXPECT(gang_restart(ck, &step, &found), GANG_OK, g);
    TRUE(found == 1 && step == 3 && field[0] == 100 + rank);
    int64_t other_shape[2] = {3, 2};
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F64, 2, other_shape, 1), GANG_OK, g);
    EXPECT(gang_restart(ck, &step, &found), GANG_ERR_INPUT, g);
    TRUE(strstr(gang_last_error(g), "f") != NULL);
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F32, 2, shape, 1), GANG_OK, g);
    EXPECT(gang_restart(ck, &step, &found), GANG_ERR_INPUT, g);
    EXPECT(gang_checkpoint_region(ck, "f", field, GANG_F64, 2, shape, 1), GANG_OK, g);

    /* Trainer. */
    gang_trainer_t *tr = NULL;
    EXPECT(gang_trainer_new(NULL, 2, "", &tr), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_trainer_new(g, 0, "", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "model=nonsense", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "lr", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "colour=red", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "batch=0", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "optimizer=rmsprop", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "model=logistic", &tr), GANG_ERR_ARGUMENT, g); /* classes=0 */
    EXPECT(gang_trainer_new(g, 2, "model=linear optimizer=sgd lr=-1", &tr), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "model=linear optimizer=sgd lr=0.1 batch=8", NULL), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_new(g, 2, "model=linear optimizer=sgd lr=0.1 batch=8", &tr), GANG_OK, g);
    float x[8] = {0, 1, 1, 0, 1, 1, 0, 0}, y[4] = {1, 1, 2, 0}, out[4];
    int64_t cls[4] = {0, 1, 1, 0};
    double loss = -1;
    EXPECT(gang_trainer_step(NULL, x, 4, 2, GANG_ROW_MAJOR, y, NULL, &loss), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_trainer_step(tr, x, 4, 3, GANG_ROW_MAJOR, y, NULL, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, x, 4, 2, GANG_ROW_MAJOR, y, cls, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, x, 4, 2, GANG_ROW_MAJOR, NULL, NULL, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, x, 4, 2, 7, y, NULL, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, NULL, 4, 2, GANG_ROW_MAJOR, y, NULL, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, x, -4, 2, GANG_ROW_MAJOR, y, NULL, &loss), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_step(tr, x, 4, 2, GANG_ROW_MAJOR, y, NULL, &loss), GANG_OK, g);
    TRUE(loss > 0);
    EXPECT(gang_trainer_step(tr, x, 4, 2, GANG_COLUMN_MAJOR, y, NULL, NULL), GANG_OK, g);

    /* Arrow: a FixedSizeList<float32>[2] over x, float32 labels over y. */
    const void *vbufs[2] = {NULL, x}, *lbufs[1] = {NULL}, *ybufs[2] = {NULL, y};
    struct ArrowArray values = {8, 0, 0, 2, 0, vbufs, NULL, NULL, release_array, NULL};
    struct ArrowArray *kids[1] = {&values};
    struct ArrowArray xa = {4, 0, 0, 1, 1, lbufs, kids, NULL, release_array, NULL};
    struct ArrowSchema item = {"f", "item", NULL, 0, 0, NULL, NULL, release_schema, NULL};
    struct ArrowSchema *skids[1] = {&item};
    struct ArrowSchema xs = {"+w:2", "x", NULL, 0, 1, skids, NULL, release_schema, NULL};
    struct ArrowArray ya = {4, 0, 0, 2, 0, ybufs, NULL, NULL, release_array, NULL};
    struct ArrowSchema ys = {"f", "y", NULL, 0, 0, NULL, NULL, release_schema, NULL};
    EXPECT(gang_trainer_step_arrow(tr, &xa, &xs, &ya, &ys, &loss), GANG_OK, g);
    EXPECT(gang_trainer_step_arrow(tr, NULL, &xs, &ya, &ys, &loss), GANG_ERR_ARGUMENT, g);
    struct ArrowSchema wide = xs;
    wide.format = "+w:3";
    EXPECT(gang_trainer_step_arrow(tr, &xa, &wide, &ya, &ys, &loss), GANG_ERR_ARGUMENT, g);
    struct ArrowSchema dbl = ys;
    dbl.format = "g";
    EXPECT(gang_trainer_step_arrow(tr, &xa, &xs, &ya, &dbl, &loss), GANG_ERR_ARGUMENT, g);
    struct ArrowSchema released = ys;
    released.release = NULL;
    EXPECT(gang_trainer_step_arrow(tr, &xa, &xs, &ya, &released, &loss), GANG_ERR_ARGUMENT, g);
    unsigned char validity = 0x7;
    const void *nbufs[2] = {&validity, y};
    struct ArrowArray with_nulls = {4, 1, 0, 2, 0, nbufs, NULL, NULL, release_array, NULL};
    EXPECT(gang_trainer_step_arrow(tr, &xa, &xs, &with_nulls, &ys, &loss), GANG_ERR_ARGUMENT, g);
    struct ArrowArray short_y = ya;
    short_y.length = 3;
    EXPECT(gang_trainer_step_arrow(tr, &xa, &xs, &short_y, &ys, &loss), GANG_ERR_ARGUMENT, g);

    int64_t outputs = 0;
    EXPECT(gang_trainer_outputs(tr, &outputs), GANG_OK, g);
    TRUE(outputs == 1);
    EXPECT(gang_trainer_predict(tr, x, 4, 2, GANG_ROW_MAJOR, out, 2), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_predict(tr, x, 4, 2, GANG_ROW_MAJOR, NULL, 4), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_predict(tr, x, 4, 2, GANG_ROW_MAJOR, out, 4), GANG_OK, g);
    EXPECT(gang_trainer_save(tr, NULL), GANG_ERR_ARGUMENT, g);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    EXPECT(gang_trainer_save(tr, path), GANG_OK, g);

    /* Parquet output. */
    const char *names[2] = {"a", "b"}, *dup[2] = {"a", "a"};
    int types[2] = {GANG_F64, GANG_I64}, bad_types[2] = {GANG_F64, 99};
    int64_t ints[4] = {1, 2, 3, 4};
    const void *cols[2] = {buf, ints};
    int written = -1;
    snprintf(path, sizeof path, "%s/out", dir);
    EXPECT(gang_write_parquet(g, NULL, 4, 2, names, types, cols, &written), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_write_parquet(g, path, 4, 0, names, types, cols, &written), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_write_parquet(g, path, 4, 2, dup, types, cols, &written), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_write_parquet(g, path, 4, 2, names, bad_types, cols, &written), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_write_parquet(g, path, 4, 2, NULL, types, cols, &written), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_write_parquet(g, path, 4, 2, names, types, cols, &written), GANG_OK, g);
    TRUE(written == 1);
    EXPECT(gang_write_parquet(g, path, 4, 2, names, types, cols, &written), GANG_OK, g);
    TRUE(written == 0);
    const char *other[2] = {"a", "c"};
    EXPECT(gang_write_parquet(g, path, 4, 2, other, types, cols, &written), GANG_ERR_IO, g);
    EXPECT2(gang_write_parquet(g, "/proc/gang-cannot-write-here", 4, 2, names, types, cols, &written), GANG_ERR_IO,
            GANG_ERR_PEER, g);

    /* The trainer's state in a checkpoint: saved and restored in place. */
    EXPECT(gang_trainer_checkpoint(tr, NULL), GANG_ERR_ARGUMENT, g);
    EXPECT(gang_trainer_checkpoint(NULL, ck), GANG_ERR_ARGUMENT, NULL);
    EXPECT(gang_trainer_checkpoint(tr, ck), GANG_OK, g);
    EXPECT(gang_checkpoint(ck, 5), GANG_OK, g);
    float before[4], after[4];
    EXPECT(gang_trainer_predict(tr, x, 4, 2, GANG_ROW_MAJOR, before, 4), GANG_OK, g);
    EXPECT(gang_trainer_step(tr, x, 4, 2, GANG_ROW_MAJOR, y, NULL, &loss), GANG_OK, g);
    EXPECT(gang_restart(ck, &step, &found), GANG_OK, g);
    EXPECT(gang_trainer_predict(tr, x, 4, 2, GANG_ROW_MAJOR, after, 4), GANG_OK, g);
    TRUE(found == 1 && step == 5 && memcmp(before, after, sizeof before) == 0);

    /* One rank's bad argument to a collective call is an error on every rank (the others
     * get GANG_ERR_PEER), not a hang. */
    if (size > 1) {
        int mine = rank == 1 ? GANG_ERR_ARGUMENT : GANG_ERR_PEER;
        EXPECT(gang_checkpoint(ck, rank == 1 ? -1 : 6), mine, g);
        EXPECT(gang_trainer_step(tr, x, 4, rank == 1 ? 3 : 2, GANG_ROW_MAJOR, y, NULL, &loss), mine, g);
        EXPECT(gang_trainer_step_arrow(tr, &xa, rank == 1 ? &wide : &xs, &ya, &ys, &loss), mine, g);
        int peer_types[2] = {GANG_F64, rank == 1 ? 99 : GANG_I64};
        snprintf(path, sizeof path, "%s/out-peer", dir);
        EXPECT(gang_write_parquet(g, path, 4, 2, names, peer_types, cols, &written), mine, g);
        gang_trainer_t *tr2 = (gang_trainer_t *)0x1;
        EXPECT(gang_trainer_new(g, 2, rank == 1 ? "model=nonsense" : "model=linear", &tr2), mine, g);
        TRUE(tr2 == NULL);
        EXPECT(gang_trainer_save(tr, rank == 1 ? NULL : path), mine, g);
        EXPECT(gang_restart(ck, rank == 1 ? NULL : &step, &found), mine, g);
        EXPECT(gang_barrier(g), GANG_OK, g); /* still in step */
    }

    /* Order: the gang outlives its checkpoints and trainers; a checkpoint holding a
     * trainer's state goes first. */
    EXPECT(gang_finalize(g), GANG_ERR_STATE, g);
    EXPECT(gang_trainer_free(tr), GANG_ERR_STATE, g);
    EXPECT(gang_checkpoint_free(ck), GANG_OK, g);
    EXPECT(gang_trainer_free(tr), GANG_OK, g);
    EXPECT(gang_checkpoint_free(NULL), GANG_OK, NULL);
    EXPECT(gang_trainer_free(NULL), GANG_OK, NULL);
    EXPECT(gang_finalize(g), GANG_OK, NULL);
    EXPECT(gang_finalize(NULL), GANG_OK, NULL);

    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("bad_args: %d checks, %d failures\n", checks, all);
    MPI_Finalize();
    return all ? 1 : 0;
}
