/* Reference for tools/bench: a single-threaded read of files into fresh memory.
 *
 *   fresh_read FILE...
 *
 * For each FILE in order: open, fstat, malloc(size) (fresh pages: glibc serves large blocks
 * with mmap, so every file pays its own page faults), read() loop into the block until EOF,
 * touch nothing else, free, close. The clock (CLOCK_MONOTONIC) runs from before the first open
 * to after the last free, so it covers open/malloc/page faults/kernel copy/free, and nothing
 * else (no process start, no argument parsing).
 *
 * Prints one JSON object to stdout: {"files": N, "bytes": B, "seconds": S, "gbps": B/S/1e9}.
 * Exits 1 with a message on stderr on any error (short file, read error, ENOMEM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: fresh_read FILE...\n");
    return 2;
  }
  uint64_t total = 0;
  unsigned sink = 0; /* one byte per file, so the buffer is observably used */
  double t0 = now();
  for (int i = 1; i < argc; ++i) {
    int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fprintf(stderr, "fresh_read: %s: %s\n", argv[i], strerror(errno));
      return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      fprintf(stderr, "fresh_read: %s: fstat: %s\n", argv[i], strerror(errno));
      return 1;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
      fprintf(stderr, "fresh_read: %s: malloc(%zu) failed\n", argv[i], size);
      return 1;
    }
    size_t got = 0;
    while (got < size) {
      size_t want = size - got;
      if (want > ((size_t)1 << 30)) want = (size_t)1 << 30;
      ssize_t n = read(fd, buf + got, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        fprintf(stderr, "fresh_read: %s: read: %s\n", argv[i], strerror(errno));
        return 1;
      }
      if (n == 0) {
        fprintf(stderr, "fresh_read: %s: short read (%zu of %zu bytes)\n", argv[i], got, size);
        return 1;
      }
      got += (size_t)n;
    }
    if (size) sink += buf[size - 1];
    free(buf);
    close(fd);
    total += size;
  }
  double secs = now() - t0;
  printf("{\"files\": %d, \"bytes\": %llu, \"seconds\": %.6f, \"gbps\": %.4f, \"sink\": %u}\n",
         argc - 1, (unsigned long long)total, secs, secs > 0 ? (double)total / secs / 1e9 : 0.0,
         sink);
  return 0;
}
