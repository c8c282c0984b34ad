/* The limit for launch to first barrier: MPI_Init, one barrier, MPI_Finalize, nothing else.
 * Rank 0 prints the world size and how many distinct hosts it spans. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size, len;
    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(name, &len);
    MPI_Barrier(MPI_COMM_WORLD);
    static char all[1024][MPI_MAX_PROCESSOR_NAME];
    MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        int hosts = 0;
        for (int i = 0; i < size && i < 1024; i++) {
            int seen = 0;
            for (int j = 0; j < i; j++) seen |= strcmp(all[i], all[j]) == 0;
            hosts += !seen;
        }
        printf("mpi_hello: %d ranks on %d hosts\n", size, hosts);
    }
    MPI_Finalize();
    return 0;
}
