/* The job network's MPI check: every rank exchanges a message with every other (MPI_Alltoall), then
 * an MPI_Allreduce of the ranks must equal n(n-1)/2; every rank prints where it runs and what it saw.
 * The tests and the demo run it with `srun --mpi=pmi2` across a job's guests.
 *
 * The all-to-all also keeps clear of a hang in MPICH 4.0's UCX layer (Debian 12): an endpoint never
 * used before MPI_Finalize is wired up while closing, which needs its peer's progress, and the peer
 * may already wait in the PMI barrier; seen under TCG on hosts and guests alike. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    int *to = malloc(sizeof(int) * (size_t)size), *from = malloc(sizeof(int) * (size_t)size);
    for (int i = 0; i < size; i++) to[i] = rank * 1000 + i;
    MPI_Alltoall(to, 1, MPI_INT, from, 1, MPI_INT, MPI_COMM_WORLD);
    int all = 1;
    for (int i = 0; i < size; i++) all &= from[i] == i * 1000 + rank;
    long mine = rank, sum = -1;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    long want = (long)size * (size - 1) / 2;
    printf("rank %d of %d on %s: alltoall %s, allreduce %ld (%s)\n", rank, size, host, all ? "ok" : "WRONG", sum,
           sum == want ? "correct" : "WRONG");
    free(to);
    free(from);
    MPI_Finalize();
    return sum == want && all ? 0 : 1;
}
