// The storage layer's Asio thread pool (run_on_pool), and copy_slices: many tensor copies at
// memory bandwidth on it (async_save's staging copy, where the caller waits for exactly this).
module;
#include <boost/asio/post.hpp>
#include <boost/asio/io_context.hpp>
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <thread>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.planning;

namespace dcp::storage {
namespace asio = boost::asio;

namespace {
// Dense copies are cut into pieces of this size so that a single large tensor still uses
// every thread.
constexpr std::uint64_t kPieceBytes = std::uint64_t{16} << 20;
}  // namespace

int default_threads() noexcept { return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)); }

void run_on_pool(int threads, std::size_t count, const std::function<void(std::size_t)>& task,
                 const std::function<void(std::size_t, Error)>& fail) {
  // asio::thread_pool(n) whose k-th thread cannot start (no memory left for its stack) joins
  // the threads it started, which wait for work forever: a hang. Here the work is posted
  // first and each thread runs the io_context until it is done, so a thread that does not
  // start is only missing, and this thread runs it when none started. A worker only records
  // what it caught (copying an exception_ptr allocates nothing); the errors are built and
  // handed to `fail` on this thread, where a throw reaches the caller.
  std::vector<std::exception_ptr> caught(count);
  asio::io_context io(std::max(1, threads));
  for (std::size_t i = 0; i < count; ++i)
    asio::post(io, [&task, &caught, i]() noexcept {
      try {
        task(i);
      } catch (...) {
        caught[i] = std::current_exception();
      }
    });
  std::vector<std::thread> workers;
  try {
    workers.reserve(static_cast<std::size_t>(std::max(1, threads)));
    for (int t = 0; t < threads; ++t) workers.emplace_back([&io] { io.run(); });
  } catch (...) {  // out of memory or of threads: the workers that started do the rest
  }
  if (workers.empty()) io.run();
  for (auto& w : workers) w.join();
  for (std::size_t i = 0; i < count; ++i) {
    if (!caught[i]) continue;
    try {
      std::rethrow_exception(caught[i]);
    } catch (...) {
      fail(i, current_exception_as_error());
    }
  }
}

void copy_slices(std::span<const SliceCopy> copies, int threads) {
  std::vector<std::function<void()>> work;
  for (const auto& c : copies) {
    if (c.to.dtype != c.from.dtype || c.to.sizes != c.from.sizes)
      throw Error(Errc::invalid_argument, "copy between slices of different shapes or dtypes");
    const auto bytes = metadata::byte_size(c.from.sizes, c.from.dtype);
    if (bytes == 0) continue;
    if (planning::is_contiguous(c.to) && planning::is_contiguous(c.from)) {
      for (std::uint64_t at = 0; at < bytes; at += kPieceBytes) {
        const auto n = static_cast<std::size_t>(std::min(kPieceBytes, bytes - at));
        work.push_back([to = c.to.data + at, from = c.from.data + at, n] { std::memcpy(to, from, n); });
      }
    } else {
      work.push_back([&c] { copy_box(c.to.data, c.to.strides, c.to.dtype, c.from.data, c.from.strides, c.from.dtype, c.from.sizes); });
    }
  }
  const auto pool_size = std::min<std::size_t>(work.size(), static_cast<std::size_t>(threads > 0 ? threads : default_threads()));
  if (pool_size <= 1) {
    for (auto& w : work) w();
    return;
  }
  // memcpy and copy_box do not throw: nothing can fail.
  run_on_pool(static_cast<int>(pool_size), work.size(), [&](std::size_t i) { work[i](); }, [](std::size_t, Error) {});
}

}  // namespace dcp::storage
