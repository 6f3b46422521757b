// Buffer ownership and the host allocator: aligned_alloc below 2 MiB, 2 MiB-aligned
// MADV_HUGEPAGE mappings from 2 MiB up.
module;
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <sys/mman.h>
#include <utility>
module dcp.memory;
import dcp.error;

namespace dcp::memory {
namespace {

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

void unmap(std::byte* data, std::size_t size, void*) noexcept { ::munmap(data, round_up(size, kPageBytes)); }
void free_aligned(std::byte* data, std::size_t, void*) noexcept { std::free(data); }

// A mapping aligned to 2 MiB with MADV_HUGEPAGE, trimmed to `bytes` rounded to pages (so the
// resident set does not grow); nullptr when the kernel refuses.
std::byte* map_huge(std::size_t bytes) {
  const std::size_t length = round_up(bytes, kPageBytes);
  void* raw = ::mmap(nullptr, length + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const auto aligned = round_up(start, kHugePageBytes);
  if (aligned > start) ::munmap(raw, aligned - start);
  const auto end = start + length + kHugePageBytes;
  if (end > aligned + length) ::munmap(reinterpret_cast<void*>(aligned + length), end - (aligned + length));
  ::madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
  return reinterpret_cast<std::byte*>(aligned);
}

alignas(kMinAlignment) std::byte empty_storage[kMinAlignment];

}  // namespace

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
      release_(std::exchange(other.release_, nullptr)), context_(std::exchange(other.context_, nullptr)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    release_ = std::exchange(other.release_, nullptr);
    context_ = std::exchange(other.context_, nullptr);
  }
  return *this;
}

Buffer::~Buffer() { reset(); }

void Buffer::reset() noexcept {
  if (release_) release_(data_, size_, context_);
  data_ = nullptr;
  size_ = 0;
  release_ = nullptr;
  context_ = nullptr;
}

Buffer allocate(std::uint64_t bytes) {
  if (bytes == 0) return Buffer(empty_storage, 0, nullptr, nullptr);
  if (bytes > SIZE_MAX - kHugePageBytes)
    throw Error(Errc::resource_exhausted, "allocating " + std::to_string(bytes) + " bytes: out of memory");
  const auto size = static_cast<std::size_t>(bytes);
  if (size >= kHugePageBytes)
    if (std::byte* data = map_huge(size)) return Buffer(data, size, unmap, nullptr);
  const std::size_t alignment = size >= kPageBytes ? kPageBytes : kMinAlignment;
  auto* data = static_cast<std::byte*>(std::aligned_alloc(alignment, round_up(size, alignment)));
  if (!data) throw Error(Errc::resource_exhausted, "allocating " + std::to_string(bytes) + " bytes: out of memory");
  return Buffer(data, size, free_aligned, nullptr);
}

}  // namespace dcp::memory
