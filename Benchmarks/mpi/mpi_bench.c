/* The job network's MPI benchmark: ping-pong latency of small messages and streaming bandwidth of
 * 1 MiB messages between ranks 0 and 1, and the time of an 8-byte MPI_Allreduce over all ranks.
 * Prints one line per measure, `name value unit`, for Benchmarks/mpi_network.py to read. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double pingpong(int rank, int iters, int bytes)
{
    char *buf = calloc(1, (size_t)bytes + 1);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    double t = MPI_Wtime() - t0;
    free(buf);
    return t / iters / 2 * 1e6; /* one-way, microseconds */
}

static double bandwidth(int rank, int iters, int bytes)
{
    enum { WINDOW = 8 };
    char *buf = malloc((size_t)bytes * WINDOW);
    memset(buf, rank, (size_t)bytes * WINDOW);
    MPI_Request req[WINDOW];
    MPI_Status st[WINDOW]; /* not MPI_STATUSES_IGNORE: GCC 12 misreads its size */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Isend(buf + (size_t)w * bytes, bytes, MPI_CHAR, 1, w, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, st);
        } else if (rank == 1) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Irecv(buf + (size_t)w * bytes, bytes, MPI_CHAR, 0, w, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, st);
        }
    }
    char ack = 0;
    if (rank == 1) MPI_Send(&ack, 1, MPI_CHAR, 0, 99, MPI_COMM_WORLD);
    if (rank == 0) MPI_Recv(&ack, 1, MPI_CHAR, 1, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    double t = MPI_Wtime() - t0;
    free(buf);
    return (double)bytes * WINDOW * iters / t / 1e6; /* MB/s */
}

static double allreduce(int iters)
{
    double in = 1, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD); /* warm-up */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) MPI_Allreduce(&in, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return (MPI_Wtime() - t0) / iters * 1e6;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *what = argc > 1 ? argv[1] : "all";
    /* Every pair connected before measuring (and before MPI_Finalize: see mpi_check.c). */
    int *x = calloc((size_t)size, sizeof(int)), *y = calloc((size_t)size, sizeof(int));
    MPI_Alltoall(x, 1, MPI_INT, y, 1, MPI_INT, MPI_COMM_WORLD);
    free(x);
    free(y);
    int p2p = size >= 2 && (!strcmp(what, "all") || !strcmp(what, "p2p"));
    if (p2p) {
        pingpong(rank, 50, 8); /* warm-up: connections are made on first use */
        double lat = pingpong(rank, 1000, 8);
        bandwidth(rank, 2, 1 << 20);
        double bw = bandwidth(rank, 20, 1 << 20);
        if (rank == 0) {
            printf("latency_8B %.2f us\n", lat);
            printf("bandwidth_1MiB %.1f MB/s\n", bw);
        }
    }
    if (!strcmp(what, "all") || !strcmp(what, "allreduce")) {
        double ar = allreduce(200);
        if (rank == 0) printf("allreduce_8B_%dranks %.2f us\n", size, ar);
    }
    MPI_Finalize();
    return 0;
}
