// MappedFile: a read-only mapping of a whole file, and the SIGBUS guard that keeps a file
// shrinking underneath it (or a disk error) from killing the process. The kernel sends SIGBUS
// for a load from a page of a file mapping that now lies past the end of the file; the guard's
// handler maps anonymous zero pages over the rest of that mapping (the load then completes,
// reading zeros) and records the first page that faulted. The owner asks `changed()` before it
// trusts what it read, so zeros never reach a published checkpoint unnoticed.
module;
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
module dcp.storage;
import dcp.error;

namespace dcp::storage {
namespace {

// One guarded mapping. The handler reads slots with lock-free atomic loads only (it may run
// on any thread, at any moment); claiming and releasing a slot takes `g_mutex`.
struct GuardSlot {
  std::atomic<std::uintptr_t> begin{0};  // 0: free
  std::atomic<std::uintptr_t> end{0};
  std::atomic<std::uint64_t> first_fault{UINT64_MAX};  // offset of the first faulting page
  bool claimed = false;                                // under g_mutex
};
static_assert(std::atomic<std::uintptr_t>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free);

// Slots come in blocks chained by an atomic pointer and never freed: the handler may be
// walking them while another thread registers a mapping. A process maps few files at once.
struct GuardBlock {
  GuardSlot slots[64];
  std::atomic<GuardBlock*> next{nullptr};
};

GuardBlock g_first;
std::mutex g_mutex;
std::uintptr_t g_page_mask = 0;

// The handler that was installed before ours, each time ours was installed: a host (a test
// framework, Python's faulthandler) may install its own after ours, and a mapping made after
// that installs ours again. Entries are written once, under g_mutex, before the index that
// publishes them; the handler reads the newest.
constexpr int kMaxInstalls = 16;
struct sigaction g_previous[kMaxInstalls] {};
std::atomic<int> g_installs{0};

// How deep this thread is in handlers we chained to: a previous handler that chains back to
// ours (it was installed after an older install of ours, and saved that) reaches us again,
// and then the chain goes on from the handler before that older install instead of looping.
[[gnu::tls_model("initial-exec")]] thread_local int t_chaining = 0;

void die_by_default(int sig) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  ::raise(sig);
}

// Not ours: what would have happened without us. The handler that was there before gets the
// signal; with none (or SIG_IGN, which the kernel does not honour for a fault) the default
// action runs: the signal, blocked while we handle it, is raised again and delivered when we
// return, so the process dies of SIGBUS as it would have.
void chain(int sig, siginfo_t* info, void* context) {
  const int older = g_installs.load(std::memory_order_acquire) - 1 - t_chaining;
  if (older < 0) return die_by_default(sig);
  const struct sigaction& previous = g_previous[older];
  ++t_chaining;
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction) previous.sa_sigaction(sig, info, context);
  } else if (previous.sa_handler == SIG_IGN) {
    if (!info || info->si_code > 0) die_by_default(sig);  // a fault cannot be ignored; a sent one is
  } else if (previous.sa_handler != SIG_DFL) {
    previous.sa_handler(sig);
  } else {
    die_by_default(sig);
  }
  --t_chaining;
}

// Async-signal-safe: atomic loads, mmap and sigaction (system calls), no allocation or lock.
void on_sigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  if (info && info->si_code > 0) {  // a fault (si_code <= 0: sent by kill or raise)
    const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
    for (GuardBlock* block = &g_first; block; block = block->next.load(std::memory_order_acquire)) {
      for (auto& slot : block->slots) {
        const auto begin = slot.begin.load(std::memory_order_acquire);
        const auto end = slot.end.load(std::memory_order_acquire);
        if (begin == 0 || addr < begin || addr >= end) continue;
        const auto page = addr & g_page_mask;
        void* zeros = ::mmap(reinterpret_cast<void*>(page), end - page, PROT_READ,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (zeros == MAP_FAILED) break;  // cannot repair it: die as we would have
        const std::uint64_t offset = page < begin ? 0 : page - begin;
        auto first = slot.first_fault.load(std::memory_order_relaxed);
        while (offset < first && !slot.first_fault.compare_exchange_weak(first, offset, std::memory_order_release)) {
        }
        errno = saved_errno;
        return;
      }
    }
  }
  errno = saved_errno;
  chain(sig, info, context);
}

// Installs on_sigbus unless it is the handler now (under g_mutex).
void install_handler() {
  struct sigaction current {};
  if (::sigaction(SIGBUS, nullptr, &current) != 0)
    throw Error(Errc::internal, std::string("cannot read the SIGBUS handler: ") + std::strerror(errno));
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus) return;
  const int installs = g_installs.load(std::memory_order_relaxed);
  if (installs == kMaxInstalls) return;  // a host that keeps replacing ours: leave it be
  if (installs == 0) g_page_mask = ~(static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE)) - 1);
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  ::sigemptyset(&action.sa_mask);
  g_previous[installs] = current;
  g_installs.store(installs + 1, std::memory_order_release);
  if (::sigaction(SIGBUS, &action, nullptr) != 0) {
    g_installs.store(installs, std::memory_order_release);
    throw Error(Errc::internal, std::string("cannot install the SIGBUS handler: ") + std::strerror(errno));
  }
}

GuardSlot* guard(const std::byte* data, std::size_t size) {
  std::lock_guard lock(g_mutex);
  install_handler();
  for (GuardBlock* block = &g_first;; block = block->next.load(std::memory_order_acquire)) {
    for (auto& slot : block->slots) {
      if (slot.claimed) continue;
      slot.claimed = true;
      slot.first_fault.store(UINT64_MAX, std::memory_order_relaxed);
      slot.end.store(reinterpret_cast<std::uintptr_t>(data) + size, std::memory_order_release);
      slot.begin.store(reinterpret_cast<std::uintptr_t>(data), std::memory_order_release);
      return &slot;
    }
    if (!block->next.load(std::memory_order_acquire)) block->next.store(new GuardBlock, std::memory_order_release);
  }
}

void unguard(GuardSlot* slot) {
  std::lock_guard lock(g_mutex);
  slot->begin.store(0, std::memory_order_release);
  slot->end.store(0, std::memory_order_release);
  slot->claimed = false;
}

}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  // A name the user gave (or found in a directory the user named): a symlink is followed, as
  // a Hugging Face cache snapshot needs; Fd refuses FIFOs and devices without waiting on them.
  Fd fd(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw os_error(path, "cannot stat", errno);
  stamp_ = {static_cast<std::int64_t>(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_ctim.tv_sec,
            st.st_ctim.tv_nsec};
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* data = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (data == MAP_FAILED) throw os_error(path, "cannot map", errno);
    data_ = static_cast<const std::byte*>(data);
    try {
      guard_ = guard(data_, size_);
    } catch (...) {
      ::munmap(data, size_);
      throw;
    }
  }
  fd_ = fd.release();
}

void MappedFile::release(std::span<const std::byte> bytes) const noexcept {
  if (!data_ || bytes.data() < data_ || bytes.data() + bytes.size() > data_ + size_) return;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(bytes.data()) + page - 1) / page * page;
  const auto end = reinterpret_cast<std::uintptr_t>(bytes.data() + bytes.size()) / page * page;
  // A private read-only mapping of a file: the pages come back from the file (or, past a
  // shrink, from the zero pages the SIGBUS guard mapped) when touched again.
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (guard_) unguard(static_cast<GuardSlot*>(guard_));
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> MappedFile::changed() const {
  if (guard_) {
    const auto fault = static_cast<GuardSlot*>(guard_)->first_fault.load(std::memory_order_acquire);
    if (fault != UINT64_MAX)
      return "the file shrank (or could not be read) below byte " + std::to_string(fault) + " of " +
             std::to_string(size_) + " while it was read";
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return std::string("the file cannot be checked (fstat: ") + std::strerror(errno) + ")";
  const Stamp now{static_cast<std::int64_t>(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_ctim.tv_sec,
                  st.st_ctim.tv_nsec};
  if (now.size != stamp_.size)
    return "the file changed size from " + std::to_string(stamp_.size) + " to " + std::to_string(now.size) +
           " bytes while it was read";
  if (now != stamp_) return std::string("the file was modified while it was read");
  return std::nullopt;
}

void MappedFile::check_unchanged() const {
  if (auto why = changed()) throw Error(Errc::data_loss, *why).in_file(path_.string());
}

}  // namespace dcp::storage
