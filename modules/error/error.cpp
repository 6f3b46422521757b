// Error rendering and checked arithmetic.
module;
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
module dcp.error;

namespace dcp {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::not_found: return "not_found";
    case Errc::data_loss: return "data_loss";
    case Errc::out_of_range: return "out_of_range";
    case Errc::failed_precondition: return "failed_precondition";
    case Errc::unimplemented: return "unimplemented";
    case Errc::io: return "io";
    case Errc::cancelled: return "cancelled";
    case Errc::permission_denied: return "permission_denied";
    case Errc::internal: return "internal";
    default: return "unknown";
  }
}

Error::Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {
  render();
}

Error& Error::in_file(std::string_view path) {
  if (context_.file.empty()) context_.file = path;
  render();
  return *this;
}

Error& Error::for_key(std::string_view key) {
  if (context_.key.empty()) context_.key = key;
  render();
  return *this;
}

Error& Error::at_offset(std::uint64_t offset) {
  if (!context_.byte_offset) context_.byte_offset = offset;
  render();
  return *this;
}

Error& Error::add_offset(std::uint64_t base) {
  if (context_.byte_offset) *context_.byte_offset += base;
  render();
  return *this;
}

Error& Error::on_rank(int rank) {
  if (!context_.rank) context_.rank = rank;
  render();
  return *this;
}

void Error::render() {
  std::string text;
  if (context_.rank) text += "rank " + std::to_string(*context_.rank) + ": ";
  if (!context_.file.empty()) text += context_.file + ": ";
  if (!context_.key.empty()) text += "key '" + context_.key + "': ";
  if (context_.byte_offset) text += "byte " + std::to_string(*context_.byte_offset) + ": ";
  text += message_;
  text_ = std::move(text);
}

std::optional<std::uint64_t> checked_add(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

std::uint64_t add_or_throw(std::uint64_t a, std::uint64_t b, std::string_view what) {
  if (auto r = checked_add(a, b)) return *r;
  throw Error(Errc::out_of_range, std::string(what) + " overflows 64 bits");
}

std::uint64_t mul_or_throw(std::uint64_t a, std::uint64_t b, std::string_view what) {
  if (auto r = checked_mul(a, b)) return *r;
  throw Error(Errc::out_of_range, std::string(what) + " overflows 64 bits");
}

}  // namespace dcp
