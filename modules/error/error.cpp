// Error rendering, the escaping of text for terminals, and checked arithmetic.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
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

std::size_t decode_utf8(std::string_view text, std::size_t i, char32_t& code) noexcept {
  const auto b0 = static_cast<unsigned char>(text[i]);
  if (b0 < 0x80) {
    code = b0;
    return 1;
  }
  const std::size_t len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC2 ? 2 : 0;
  if (b0 >= 0xF5 || len == 0 || len > text.size() - i) return 0;
  code = b0 & (0x7Fu >> len);
  for (std::size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(text[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    code = (code << 6) | (b & 0x3Fu);
  }
  if ((len == 3 && code < 0x800) || (len == 4 && (code < 0x10000 || code > 0x10FFFF))) return 0;
  return len;
}

void append_escaped(std::string& out, std::string_view text, Escape style, std::size_t max_chars) {
  std::size_t used = 0;
  char unit[8];
  for (std::size_t i = 0; i < text.size();) {
    char32_t code = 0;
    std::size_t len = decode_utf8(text, i, code);
    const bool surrogate = code >= 0xD800 && code <= 0xDFFF;
    std::string_view piece;
    if (len == 0 || surrogate) {  // each byte of what is not UTF-8 on its own
      std::snprintf(unit, sizeof unit, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(text[i])));
      piece = unit;
      len = 1;
    } else if (code == '\n') {
      piece = "\\n";
    } else if (code == '\r') {
      piece = "\\r";
    } else if (code == '\t') {
      piece = "\\t";
    } else if (code == '\\' && style == Escape::name) {
      piece = "\\\\";
    } else if (code < 0x20 || code == 0x7F) {
      std::snprintf(unit, sizeof unit, "\\x%02x", static_cast<unsigned>(code));
      piece = unit;
    } else if (code >= 0x80 && code <= 0x9F) {  // C1: CSI (U+009B) starts a sequence as ESC [ does
      std::snprintf(unit, sizeof unit, "\\u%04x", static_cast<unsigned>(code));
      piece = unit;
    } else {
      piece = text.substr(i, len);
    }
    if (piece.size() > max_chars - used) {
      out += "...";
      return;
    }
    out += piece;
    used += piece.size();
    i += len;
  }
}

std::string escape_text(std::string_view text, Escape style) {
  std::string out;
  append_escaped(out, text, style);
  return out;
}

void Error::render() {
  std::string text;
  if (context_.rank) text += "rank " + std::to_string(*context_.rank) + ": ";
  if (!context_.file.empty()) {
    append_escaped(text, context_.file, Escape::name, kMaxPartChars);
    text += ": ";
  }
  if (!context_.key.empty()) {
    text += "key '";
    append_escaped(text, context_.key, Escape::name, kMaxPartChars);
    text += "': ";
  }
  if (context_.byte_offset) text += "byte " + std::to_string(*context_.byte_offset) + ": ";
  append_escaped(text, message_, Escape::message, kMaxPartChars);
  text_ = std::move(text);
}

Error current_exception_as_error() {
  try {
    throw;
  } catch (const Error& e) {
    return e;
  } catch (const std::bad_alloc&) {
    return Error(Errc::resource_exhausted, "out of memory");
  } catch (const std::system_error& e) {
    // A thread or a mapping that could not start for lack of memory, or of threads.
    if (e.code() == std::errc::not_enough_memory || e.code() == std::errc::resource_unavailable_try_again)
      return Error(Errc::resource_exhausted, std::string("out of memory: ") + e.what());
    return Error(Errc::internal, std::string("unexpected exception: ") + e.what());
  } catch (const std::exception& e) {
    return Error(Errc::internal, std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return Error(Errc::internal, "unexpected exception");
  }
}

void fail_for_key(Errc code, std::string_view fqn, std::string message) {
  Error e(code, std::move(message));
  e.for_key(fqn);
  throw e;
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
