// Contiguous reads through Boost.Asio's io_uring file support, many in flight from one thread.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>
#ifdef DCP_HAVE_IO_URING
#include <boost/asio/io_context.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/asio/read_at.hpp>
#endif
module dcp.storage;
import dcp.error;

namespace dcp::storage {

#ifdef DCP_HAVE_IO_URING
namespace {

namespace asio = boost::asio;

// Runs on one thread, the io_context's only runner, so its state needs no lock: io_uring keeps
// up to `in_flight` reads going in the kernel. Completion handlers only record what completed
// (into slots allocated up front: a handler never allocates, opens or throws); the loop in
// run() opens files and starts reads between completions, where an exception is an ordinary
// error of its piece. Pieces come grouped by file; a file is opened when its first piece starts
// and closed when its last piece completes, so at most `in_flight` files are open.
class UringReader {
 public:
  UringReader(asio::io_context& ctx, const FileTable& files, const std::vector<ReadPiece>& pieces,
              std::vector<std::optional<Error>>& errors)
      : ctx_(ctx), files_(files), pieces_(pieces), errors_(errors), done_(pieces.size()) {}

  /// Opens the first piece's file: throws system_error when io_uring itself is refused.
  void probe() { open(pieces_.front().file); }

  void run(std::size_t in_flight) {
    std::size_t started = 0;
    while (true) {
      while (started - finished_ < in_flight && next_ < pieces_.size())
        if (start(next_++)) ++started;
      // One handler at a time (a read's own, or a step inside it) until a read completes.
      if (started == finished_ || ctx_.run_one() == 0) break;
      if (ctx_.stopped()) ctx_.restart();  // it stops whenever nothing is in flight
    }
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      const auto& d = done_[i];
      if (!d.completed || (!d.ec && d.bytes == pieces_[i].size)) continue;
      const ReadPiece& piece = pieces_[i];
      Error e(d.ec ? Errc::io : Errc::data_loss,
              d.ec ? "read failed: " + d.ec.message() : "file ends " + std::to_string(piece.size - d.bytes) + " bytes short");
      e.in_file(files_.path(piece.file).string()).at_offset(piece.offset + d.bytes);
      errors_[i] = std::move(e);
    }
  }

 private:
  struct Done {
    bool completed = false;
    boost::system::error_code ec;
    std::size_t bytes = 0;
  };

  // Opens piece i's file (when it is not open yet) and starts its read; false (with the
  // piece's error) when that fails.
  bool start(std::size_t i) {
    const ReadPiece& p = pieces_[i];
    try {
      open(p.file);
      // The handler holds the file: it closes when its last read completes.
      auto file = open_;
      // One operation per piece: a large completion condition avoids Asio's 64 KiB default steps.
      asio::async_read_at(*file, p.offset, asio::buffer(p.destination, p.size),
                          [](const boost::system::error_code& ec, std::size_t) -> std::size_t {
                            return ec ? 0 : std::size_t{1} << 30;
                          },
                          [this, i, file](const boost::system::error_code& ec, std::size_t n) noexcept {
                            done_[i] = Done{true, ec, n};
                            ++finished_;
                          });
      if (next_ < pieces_.size() && pieces_[next_].file != open_name_) open_.reset();
      return true;
    } catch (const boost::system::system_error& e) {
      record(i, e.code() == boost::system::errc::no_such_file_or_directory ? Errc::not_found : Errc::io,
             "cannot open: " + e.code().message());
    } catch (...) {
      errors_[i] = current_exception_as_error();
      errors_[i]->in_file(files_.path(p.file).string());
    }
    open_.reset();
    return false;
  }

  void record(std::size_t i, Errc code, std::string message) {
    errors_[i] = Error(code, std::move(message)).in_file(files_.path(pieces_[i].file).string());
  }

  void open(const std::string& name) {
    if (open_ && open_name_ == name) return;
    open_.reset();
    Fd fd(files_.path(name));  // never waits on a FIFO planted in the checkpoint
    open_ = std::make_shared<asio::random_access_file>(ctx_, fd.get());
    (void)fd.release();  // the file object closes it now
    open_name_ = name;
  }

  asio::io_context& ctx_;
  const FileTable& files_;
  const std::vector<ReadPiece>& pieces_;
  std::vector<std::optional<Error>>& errors_;
  std::vector<Done> done_;
  std::size_t finished_ = 0;  // reads whose handler ran
  std::size_t next_ = 0;
  std::string open_name_;
  std::shared_ptr<asio::random_access_file> open_;
};

}  // namespace

bool read_pieces_uring(const FileTable& files, const std::vector<ReadPiece>& pieces, std::size_t in_flight,
                       std::vector<std::optional<Error>>& errors) {
  if (pieces.empty()) return true;
  asio::io_context ctx(1);
  UringReader reader(ctx, files, pieces, errors);
  try {
    reader.probe();
  } catch (const boost::system::system_error&) {
    return false;  // io_uring refused (seccomp, old kernel)
  } catch (const Error&) {
    return false;  // the file cannot be opened: pread says why
  }
  reader.run(std::max<std::size_t>(in_flight, 1));
  return true;
}

#else

bool read_pieces_uring(const FileTable&, const std::vector<ReadPiece>&, std::size_t,
                       std::vector<std::optional<Error>>&) {
  return false;
}

#endif

}  // namespace dcp::storage
