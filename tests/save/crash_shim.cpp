// An LD_PRELOAD shim that makes a process meet the surroundings a user's machine may give it:
// killed (SIGKILL) at the k-th rename, fsync or unlink it makes, a file system without
// renameat2 (EINVAL, as NFS and many FUSE file systems answer) or without flock (ENOLCK), and
// another user creating a file in the middle of its work. The crash tests start dcpp programs
// under it (tests/save/test_save_publish.cpp).
//
// Environment:
//   CRASH_SHIM_OP=fsync|rename|unlink|any   the calls counted (default any)
//   CRASH_SHIM_AT=K                         act at the K-th counted call (1-based); unset: count only
//   CRASH_SHIM_WHEN=before|after            kill before the call runs (default) or after it returned
//   CRASH_SHIM_TOUCH=PATH                   at the K-th call create PATH (a concurrent user) instead of dying
//   CRASH_SHIM_COUNTS=PATH                  at exit, write "fsync N\nrename N\nunlink N\n" there
//   CRASH_SHIM_NO_RENAMEAT2=1               renameat2 fails with EINVAL whatever its flags
//   CRASH_SHIM_NO_FLOCK=1                   flock fails with ENOLCK
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

extern "C" {

enum { kFsync, kRename, kUnlink, kKinds };
static const char* const kNames[kKinds] = {"fsync", "rename", "unlink"};
static std::atomic<long> counts[kKinds];
static std::atomic<long> counted;

static int env_flag(const char* name) {
  const char* v = getenv(name);
  return v && strcmp(v, "1") == 0;
}

static int counts_kind(int kind) {
  const char* op = getenv("CRASH_SHIM_OP");
  return !op || strcmp(op, "any") == 0 || strcmp(op, kNames[kind]) == 0;
}

// 1 when the call being made is the one to act on.
static int is_target(int kind) {
  counts[kind].fetch_add(1);
  if (!counts_kind(kind)) return 0;
  const long n = counted.fetch_add(1) + 1;
  const char* at = getenv("CRASH_SHIM_AT");
  return at && atol(at) == n;
}

static void act(int after_call) {
  const char* touch = getenv("CRASH_SHIM_TOUCH");
  const char* when = getenv("CRASH_SHIM_WHEN");
  const int after = when && strcmp(when, "after") == 0;
  if (touch) {
    if (!after_call) {
      const int fd = open(touch, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd >= 0) {
        (void)!write(fd, "user\n", 5);
        close(fd);
      }
    }
    return;
  }
  if (after == after_call) kill(getpid(), SIGKILL);
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, name))

#define COUNTED(kind, call)                      \
  do {                                           \
    const int target = is_target(kind);          \
    if (target) act(0);                          \
    const auto rc = (call);                      \
    const int saved = errno;                     \
    if (target) act(1);                          \
    errno = saved;                               \
    return rc;                                   \
  } while (0)

int fsync(int fd) { COUNTED(kFsync, REAL("fsync", int (*)(int))(fd)); }
int fdatasync(int fd) { COUNTED(kFsync, REAL("fdatasync", int (*)(int))(fd)); }
int rename(const char* a, const char* b) { COUNTED(kRename, REAL("rename", int (*)(const char*, const char*))(a, b)); }
int renameat(int da, const char* a, int db, const char* b) {
  COUNTED(kRename, REAL("renameat", int (*)(int, const char*, int, const char*))(da, a, db, b));
}
int renameat2(int da, const char* a, int db, const char* b, unsigned flags) {
  if (env_flag("CRASH_SHIM_NO_RENAMEAT2")) {
    errno = EINVAL;
    return -1;
  }
  COUNTED(kRename, REAL("renameat2", int (*)(int, const char*, int, const char*, unsigned))(da, a, db, b, flags));
}
// Programs may call renameat2 through syscall(2) (glibc before 2.28 had no wrapper).
long syscall(long number, ...) {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (auto& v : a) v = va_arg(ap, long);
  va_end(ap);
#ifdef SYS_renameat2
  if (number == SYS_renameat2) {
    if (env_flag("CRASH_SHIM_NO_RENAMEAT2")) {
      errno = EINVAL;
      return -1;
    }
    COUNTED(kRename, REAL("syscall", long (*)(long, ...))(number, a[0], a[1], a[2], a[3], a[4]));
  }
#endif
  return REAL("syscall", long (*)(long, ...))(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
int link(const char* a, const char* b) { COUNTED(kRename, REAL("link", int (*)(const char*, const char*))(a, b)); }
int unlink(const char* p) { COUNTED(kUnlink, REAL("unlink", int (*)(const char*))(p)); }
int unlinkat(int d, const char* p, int flags) { COUNTED(kUnlink, REAL("unlinkat", int (*)(int, const char*, int))(d, p, flags)); }
int flock(int fd, int op) {
  if (env_flag("CRASH_SHIM_NO_FLOCK")) {
    errno = ENOLCK;
    return -1;
  }
  return REAL("flock", int (*)(int, int))(fd, op);
}

__attribute__((destructor)) static void write_counts() {
  const char* path = getenv("CRASH_SHIM_COUNTS");
  if (!path) return;
  FILE* f = fopen(path, "w");
  if (!f) return;
  for (int k = 0; k < kKinds; ++k) fprintf(f, "%s %ld\n", kNames[k], counts[k].load());
  fclose(f);
}

}  // extern "C"
