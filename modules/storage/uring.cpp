// Contiguous reads through Boost.Asio's io_uring file support, many in flight from one thread.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
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

// Runs on one thread (the io_context's only runner), so its state needs no lock: io_uring
// already keeps `in_flight` reads going in the kernel. Pieces come grouped by file; a file is
// opened when its first piece starts and closed when its last piece completes, so at most
// `in_flight` files are open.
class UringReader {
 public:
  UringReader(asio::io_context& ctx, const FileTable& files, const std::vector<ReadPiece>& pieces,
              std::vector<std::optional<Error>>& errors)
      : ctx_(ctx), files_(files), pieces_(pieces), errors_(errors) {}

  /// Opens the first piece's file: throws system_error when io_uring itself is refused.
  void probe() { open(pieces_.front().file); }

  void start_next() {
    std::size_t i = 0;
    while (true) {
      if (next_ >= pieces_.size()) return;
      i = next_++;
      try {
        open(pieces_[i].file);
        break;
      } catch (const boost::system::system_error& e) {
        errors_[i] = Error(Errc::io, "cannot read through io_uring: " + e.code().message())
                         .in_file(files_.path(pieces_[i].file).string());
      } catch (const Error& e) {
        errors_[i] = e;
      }
    }
    const ReadPiece& p = pieces_[i];
    // The handler holds the file: it closes when its last read completes.
    auto file = open_;
    // One operation per piece: a large completion condition avoids Asio's 64 KiB default steps.
    asio::async_read_at(*file, p.offset, asio::buffer(p.destination, p.size),
                        [](const boost::system::error_code& ec, std::size_t) -> std::size_t {
                          return ec ? 0 : std::size_t{1} << 30;
                        },
                        [this, i, file](const boost::system::error_code& ec, std::size_t n) {
                          const ReadPiece& piece = pieces_[i];
                          if (ec || n != piece.size) {
                            Error e(ec ? Errc::io : Errc::data_loss,
                                    ec ? "read failed: " + ec.message()
                                       : "file ends " + std::to_string(piece.size - n) + " bytes short");
                            e.in_file(files_.path(piece.file).string()).at_offset(piece.offset + n);
                            errors_[i] = std::move(e);
                          }
                          start_next();
                        });
    if (next_ < pieces_.size() && pieces_[next_].file != open_name_) open_.reset();
  }

 private:
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
  for (std::size_t k = 0; k < std::min(in_flight, pieces.size()); ++k) reader.start_next();
  ctx.run();
  return true;
}

#else

bool read_pieces_uring(const FileTable&, const std::vector<ReadPiece>&, std::size_t,
                       std::vector<std::optional<Error>>&) {
  return false;
}

#endif

}  // namespace dcp::storage
