/* Constants that mpi.h defines as macros (and that differ between MPI libraries). */
#include <mpi.h>

void *const GANG_MPI_IN_PLACE = MPI_IN_PLACE;
const int GANG_MPI_MAX_ERROR_STRING = MPI_MAX_ERROR_STRING;
