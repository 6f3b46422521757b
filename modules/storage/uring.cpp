// Contiguous reads through Boost.Asio's io_uring file support, many in flight.
module;
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>
#ifdef DCP_HAVE_IO_URING
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/asio/read_at.hpp>
#endif
module dcp.storage;
import dcp.error;

namespace dcp::storage {

#ifdef DCP_HAVE_IO_URING
namespace {

namespace asio = boost::asio;

// Each completion starts the next unread piece, so `in_flight` reads stay outstanding.
class UringReader {
 public:
  UringReader(asio::io_context& ctx, const std::vector<ReadPiece>& pieces, std::vector<std::optional<Error>>& errors)
      : ctx_(ctx), pieces_(pieces), errors_(errors) {}

  void open_files() {
    for (const auto& p : pieces_) {
      auto& file = files_[p.path.string()];
      if (!file) file = std::make_unique<asio::random_access_file>(ctx_, p.path.string(), asio::file_base::read_only);
    }
  }

  void start_next() {
    const std::size_t i = next_.fetch_add(1);
    if (i >= pieces_.size()) return;
    const ReadPiece& p = pieces_[i];
    auto& file = *files_.at(p.path.string());
    // One operation per piece: a large completion condition avoids Asio's 64 KiB default steps.
    asio::async_read_at(file, p.offset, asio::buffer(p.destination, p.size),
                        [](const boost::system::error_code& ec, std::size_t) -> std::size_t {
                          return ec ? 0 : std::size_t{1} << 30;
                        },
                        [this, i](const boost::system::error_code& ec, std::size_t n) {
                          if (ec || n != pieces_[i].size) {
                            Error e(ec ? Errc::io : Errc::data_loss,
                                    ec ? "read failed: " + ec.message()
                                       : "file ends " + std::to_string(pieces_[i].size - n) + " bytes short");
                            e.in_file(pieces_[i].path.string()).at_offset(pieces_[i].offset + n);
                            std::lock_guard lock(mutex_);
                            errors_[i] = e;
                          }
                          start_next();
                        });
  }

 private:
  asio::io_context& ctx_;
  const std::vector<ReadPiece>& pieces_;
  std::vector<std::optional<Error>>& errors_;
  std::map<std::string, std::unique_ptr<asio::random_access_file>> files_;
  std::atomic<std::size_t> next_{0};
  std::mutex mutex_;
};

}  // namespace

bool read_pieces_uring(const std::vector<ReadPiece>& pieces, int threads, std::size_t in_flight,
                       std::vector<std::optional<Error>>& errors) {
  asio::io_context ctx;
  UringReader reader(ctx, pieces, errors);
  try {
    reader.open_files();
  } catch (const boost::system::system_error&) {
    return false;  // io_uring_queue_init refused (seccomp, old kernel): caller uses pread
  }
  for (std::size_t k = 0; k < std::min(in_flight, pieces.size()); ++k) reader.start_next();
  asio::thread_pool runners(static_cast<std::size_t>(std::max(1, threads - 1)));
  for (int t = 1; t < threads; ++t) asio::post(runners, [&ctx] { ctx.run(); });
  ctx.run();
  runners.join();
  return true;
}

#else

bool read_pieces_uring(const std::vector<ReadPiece>&, int, std::size_t, std::vector<std::optional<Error>>&) {
  return false;
}

#endif

}  // namespace dcp::storage
