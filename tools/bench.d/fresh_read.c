/* Reference for tools/bench: a single-threaded read of files into fresh memory.
 *
 *   fresh_read [--prefaulted] FILE...
 *
 * Default (the reference): for each FILE in order: open, fstat, allocate a block of the file's
 * size with an anonymous private mmap, read() loop into it until EOF, munmap, close. The
 * kernel's copy faults every page of the block in (zero-fill + copy), as for a freshly
 * allocated tensor. (An explicit mmap rather than malloc: glibc's malloc does mmap large
 * blocks, but the first free() raises its dynamic mmap threshold, after which the same
 * already-faulted heap pages are recycled for every later file, so "fresh memory" and its page
 * faults would silently disappear: 0.11 s instead of 1.3 s for 1 GiB on the dev VM.)
 *
 * --prefaulted (information only, not the reference): one block of the largest file's size is
 * mmapped and memset before the clock starts, and every file is read() into it: the
 * page-cache-to-user copy alone, with no page faults.
 *
 * The clock (CLOCK_MONOTONIC) runs from before the first open to after the last munmap/close,
 * so it covers open, allocation, page faults, the kernel copy and the free, and nothing else
 * (no process start, no argument parsing, no stat of the file list).
 *
 * Prints one JSON object to stdout: {"mode": "fresh"|"prefaulted", "files": N, "bytes": B,
 * "seconds": S, "gbps": B/S/1e9, "minor_faults": page faults taken in the timed region,
 * "sink": (ignore: one byte per file, so the buffers are observably used)}.
 * Exits 1 with a message on stderr on any error (short read, read error, ENOMEM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned char *map_anon(size_t size, const char *what) {
  void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "fresh_read: %s: mmap(%zu): %s\n", what, size, strerror(errno));
    exit(1);
  }
  return p;
}

/* read() the whole file fd (size bytes) into buf; exits on error or a short file */
static void read_all(int fd, unsigned char *buf, size_t size, const char *name) {
  size_t got = 0;
  while (got < size) {
    size_t want = size - got;
    if (want > ((size_t)1 << 30)) want = (size_t)1 << 30;
    ssize_t n = read(fd, buf + got, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "fresh_read: %s: read: %s\n", name, strerror(errno));
      exit(1);
    }
    if (n == 0) {
      fprintf(stderr, "fresh_read: %s: short read (%zu of %zu bytes)\n", name, got, size);
      exit(1);
    }
    got += (size_t)n;
  }
}

int main(int argc, char **argv) {
  int first = 1, prefaulted = 0;
  if (argc > 1 && strcmp(argv[1], "--prefaulted") == 0) {
    prefaulted = 1;
    first = 2;
  }
  if (first >= argc) {
    fprintf(stderr, "usage: fresh_read [--prefaulted] FILE...\n");
    return 2;
  }

  unsigned char *shared = NULL;
  size_t shared_size = 0;
  if (prefaulted) {
    for (int i = first; i < argc; ++i) {
      struct stat st;
      if (stat(argv[i], &st) != 0) {
        fprintf(stderr, "fresh_read: %s: %s\n", argv[i], strerror(errno));
        return 1;
      }
      if ((size_t)st.st_size > shared_size) shared_size = (size_t)st.st_size;
    }
    shared = map_anon(shared_size, "buffer");
    memset(shared, 1, shared_size ? shared_size : 1);
  }

  uint64_t total = 0;
  unsigned sink = 0;
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  double t0 = now();
  for (int i = first; i < argc; ++i) {
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
    if (prefaulted && size > shared_size) {
      fprintf(stderr, "fresh_read: %s: grew while running\n", argv[i]);
      return 1;
    }
    unsigned char *buf = prefaulted ? shared : map_anon(size, argv[i]);
    read_all(fd, buf, size, argv[i]);
    if (size) sink += buf[size - 1];
    if (!prefaulted) munmap(buf, size ? size : 1);
    close(fd);
    total += size;
  }
  double secs = now() - t0;
  getrusage(RUSAGE_SELF, &ru1);
  printf("{\"mode\": \"%s\", \"files\": %d, \"bytes\": %llu, \"seconds\": %.6f, "
         "\"gbps\": %.4f, \"minor_faults\": %ld, \"sink\": %u}\n",
         prefaulted ? "prefaulted" : "fresh", argc - first, (unsigned long long)total, secs,
         secs > 0 ? (double)total / secs / 1e9 : 0.0, ru1.ru_minflt - ru0.ru_minflt, sink);
  return 0;
}
