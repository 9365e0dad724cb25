/*
 * MPI baseline of `npm run bench -- allreduce`: float32 MPI_SUM MPI_Allreduce, timed the
 * way bench/allreduce/rank.ts times the ring.
 *
 *   mpirun ... -np N allreduce <elements> <warmups> <iterations> [<elements> <warmups> <iterations> ...]
 *
 * Per size: separate send and receive buffers, filled once (the send buffer with the same
 * inputs as rank-input.ts), `warmups` untimed calls, then per iteration MPI_Barrier,
 * t0 = MPI_Wtime(), MPI_Allreduce, t1. The per-iteration times are reduced to rank 0 with
 * MPI_MAX (an iteration lasts until its slowest rank is done), and rank 0 prints one line
 * per size: {"elements":E,"times_ms":[...]}.
 */
#include <errno.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* murmur3's fmix32, as in rank-input.ts. */
static uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

static float input_value(uint32_t seed, uint32_t index) {
  return (float)((int32_t)(fmix32(index ^ seed) >> 8) - 0x800000) * 0x1p-23f;
}

static long parse_count(const char *text, long min, long max) {
  char *end = NULL;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < min || value > max) {
    fprintf(stderr, "allreduce: bad count '%s' (expected %ld..%ld)\n", text, min, max);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return value;
}

static void *checked_malloc(size_t bytes) {
  void *p = malloc(bytes);
  if (p == NULL) {
    fprintf(stderr, "allreduce: out of memory allocating %zu bytes\n", bytes);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  return p;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (argc < 4 || (argc - 1) % 3 != 0) {
    if (rank == 0) fprintf(stderr, "usage: allreduce <elements> <warmups> <iterations> [...]\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const uint32_t seed = fmix32((uint32_t)(rank + 1) * 0x9e3779b9u);

  for (int a = 1; a + 2 < argc; a += 3) {
    const int elements = (int)parse_count(argv[a], 1, INT32_MAX);
    const int warmups = (int)parse_count(argv[a + 1], 0, 1000);
    const int iterations = (int)parse_count(argv[a + 2], 1, 100000);
    float *send = checked_malloc((size_t)elements * sizeof(float));
    float *recv = checked_malloc((size_t)elements * sizeof(float));
    double *times_ms = checked_malloc((size_t)iterations * sizeof(double));
    double *max_ms = checked_malloc((size_t)iterations * sizeof(double));
    for (int i = 0; i < elements; i++) send[i] = input_value(seed, (uint32_t)i);
    /* Touch every page of the result now, as the ring's zero-filled work buffer is. */
    memset(recv, 0, (size_t)elements * sizeof(float));

    for (int w = 0; w < warmups; w++) {
      MPI_Allreduce(send, recv, elements, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    for (int it = 0; it < iterations; it++) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      MPI_Allreduce(send, recv, elements, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      times_ms[it] = (MPI_Wtime() - t0) * 1e3;
    }
    MPI_Reduce(times_ms, max_ms, iterations, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      printf("{\"elements\":%d,\"times_ms\":[", elements);
      for (int it = 0; it < iterations; it++) printf("%s%.6f", it == 0 ? "" : ",", max_ms[it]);
      printf("]}\n");
      fflush(stdout);
    }
    free(send);
    free(recv);
    free(times_ms);
    free(max_ms);
  }
  MPI_Finalize();
  return 0;
}
