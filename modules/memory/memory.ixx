// dcp.memory — host memory for loaded tensors, without libtorch.
//
// `allocate` gives the memory a full tensor is read into: 64-byte aligned, page-aligned from
// one page up, and from 2 MiB up an anonymous mapping aligned to 2 MiB with MADV_HUGEPAGE, so
// the first-touch page faults that bound loading into fresh memory come 512 times less often
// (README, "Performance"). `Buffer` owns such memory, or memory another allocator lends
// (dcp.alloc's pinned libtorch memory, an engine's arena) together with the function that
// frees it. `Device` names where the tensor-facing layers place tensors (cpu, cuda:N); this
// module only ever allocates host memory. Imports: dcp.error.
module;
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
export module dcp.memory;
import dcp.error;

export namespace dcp::memory {

/// Owned bytes, freed by the function they came with. Move-only.
class Buffer {
 public:
  /// Frees `size` bytes at `data`; `context` is what the allocator passed along.
  using Release = void (*)(std::byte* data, std::size_t size, void* context) noexcept;

  Buffer() noexcept = default;
  /// Adopts `size` bytes at `data`; `release(data, size, context)` runs when the buffer goes
  /// (no release: the memory is not owned).
  Buffer(std::byte* data, std::size_t size, Release release, void* context) noexcept
      : data_(data), size_(size), release_(release), context_(context) {}
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }

 private:
  void reset() noexcept;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  Release release_ = nullptr;
  void* context_ = nullptr;
};

/// Buffers of this size and more are 2 MiB-aligned mappings with MADV_HUGEPAGE.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
/// Every buffer's alignment (c10's CPU allocator's); from kPageBytes up, page alignment.
inline constexpr std::size_t kMinAlignment = 64;
inline constexpr std::size_t kPageBytes = 4096;

/// Uninitialized host memory of `bytes` bytes, aligned as above (an empty buffer still has a
/// non-null, aligned address). Throws resource_exhausted when memory runs out.
Buffer allocate(std::uint64_t bytes);

enum class DeviceKind { cpu, cuda };

/// Where the tensor-facing layers place tensors.
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  /// "cpu", "cuda" or "cuda:N"; throws invalid_argument otherwise.
  static Device parse(std::string_view text);
  std::string to_string() const;
  friend bool operator==(const Device&, const Device&) = default;
};

}  // namespace dcp::memory
