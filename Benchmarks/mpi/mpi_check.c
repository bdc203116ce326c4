/* The job network's MPI check: every rank prints where it runs, then an MPI_Allreduce of the ranks
 * must equal n(n-1)/2. The tests and the demo run it with `srun --mpi=pmi2` across a job's guests. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    long mine = rank, sum = -1;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    long want = (long)size * (size - 1) / 2;
    printf("rank %d of %d on %s: allreduce %ld (%s)\n", rank, size, host, sum, sum == want ? "correct" : "WRONG");
    MPI_Finalize();
    return sum == want ? 0 : 1;
}
