// Error rendering and checked arithmetic.
module;
#include <algorithm>
#include <exception>
#include <new>
#include <cstddef>
#include <cstdint>
#include <span>
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
    case Errc::resource_exhausted: return "resource_exhausted";
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

namespace {

// Keeps the head of a long part; an error must stay one short line.
std::string_view clamp(std::string_view part, bool& clamped) {
  clamped = part.size() > Error::kMaxPartChars;
  return clamped ? part.substr(0, Error::kMaxPartChars) : part;
}

void append_part(std::string& text, std::string_view part) {
  bool clamped = false;
  text += clamp(part, clamped);
  if (clamped) text += "...";
}

}  // namespace

void Error::render() {
  std::string text;
  if (context_.rank) text += "rank " + std::to_string(*context_.rank) + ": ";
  if (!context_.file.empty()) {
    append_part(text, context_.file);
    text += ": ";
  }
  if (!context_.key.empty()) {
    text += "key '";
    append_part(text, context_.key);
    text += "': ";
  }
  if (context_.byte_offset) text += "byte " + std::to_string(*context_.byte_offset) + ": ";
  append_part(text, message_);
  // A newline would break the one-line contract (keys and file names may hold any byte).
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  text_ = std::move(text);
}

Error current_exception_as_error() {
  try {
    throw;
  } catch (const Error& e) {
    return e;
  } catch (const std::bad_alloc&) {
    return Error(Errc::resource_exhausted, "out of memory");
  } catch (const std::exception& e) {
    return Error(Errc::internal, std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return Error(Errc::internal, "unexpected exception");
  }
}

std::string format_shape(std::span<const std::int64_t> dims, std::size_t max_dims) {
  std::string s = "(";
  const std::size_t shown = std::min(dims.size(), max_dims);
  for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  if (shown < dims.size()) return s + ", ..., " + std::to_string(dims.size()) + " dims)";
  return s + (dims.size() == 1 ? ",)" : ")");
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
