// parallel_for: independent per-item checks on several threads, failing as a loop would; and
// the seeded hashes of tables that untrusted input fills.
module;
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <string_view>
#include <thread>
#include <vector>
module dcp.error;

namespace dcp {

void parallel_for(std::size_t count, std::uint64_t work, const std::function<void(std::size_t)>& task) {
  constexpr std::uint64_t kParallelWork = std::uint64_t{1} << 16;
  const unsigned threads =
      work < kParallelWork || count < 2 ? 1u : std::clamp(std::thread::hardware_concurrency(), 1u, 16u);
  if (threads == 1) {
    for (std::size_t i = 0; i < count; ++i) task(i);
    return;
  }
  // Each worker keeps the lowest index that threw in its own slot, so a catch block neither
  // locks nor allocates (copying an exception_ptr does not): nothing can escape a worker.
  struct Failed {
    std::size_t index;
    std::exception_ptr error;
  };
  std::vector<Failed> failed(threads, Failed{count, nullptr});
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> first_failed{count};  // lowest index that threw so far
  auto run_items = [&](unsigned t) noexcept {
    for (std::size_t i; (i = next.fetch_add(1)) < count;) {
      if (i > first_failed.load()) continue;  // a lower item failed: no need to run this one
      try {
        task(i);
      } catch (...) {
        if (i < failed[t].index) failed[t] = Failed{i, std::current_exception()};
        for (auto seen = first_failed.load(); i < seen && !first_failed.compare_exchange_weak(seen, i);) {
        }
      }
    }
  };
  {
    std::vector<std::jthread> workers;
    try {
      workers.reserve(threads - 1);
      for (unsigned t = 1; t < threads; ++t) workers.emplace_back(run_items, t);
    } catch (...) {  // out of memory or of threads: fewer workers do it
    }
    run_items(0);  // this thread is one of them
  }  // the workers join here
  const Failed* first = nullptr;
  for (const auto& f : failed)
    if (f.error && (!first || f.index < first->index)) first = &f;
  if (first) std::rethrow_exception(first->error);
}

namespace {
std::uint64_t hash_seed() noexcept {
  static const std::uint64_t seed = []() noexcept -> std::uint64_t {
    try {
      std::random_device device;
      return (std::uint64_t{device()} << 32) ^ device();
    } catch (...) {  // no entropy source: the clock and where the code was loaded
      return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
             reinterpret_cast<std::uintptr_t>(&hash_seed);
    }
  }();
  return seed;
}

std::uint64_t finalize(std::uint64_t x) noexcept {  // splitmix64's: each bit moves about half the output
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

std::uint64_t hash_mix(std::uint64_t value) noexcept { return finalize(value ^ hash_seed()); }

std::uint64_t hash_text(std::string_view text) noexcept {
  std::uint64_t h = finalize(hash_seed() ^ text.size());
  std::size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) {  // a word at a time: millions of keys are looked up
    std::uint64_t word;
    std::memcpy(&word, text.data() + i, 8);
    h = finalize(h ^ word);
  }
  std::uint64_t tail = 0;
  if (i < text.size()) std::memcpy(&tail, text.data() + i, text.size() - i);  // never from a null data()
  return finalize(h ^ tail);
}

}  // namespace dcp
