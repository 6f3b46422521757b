// JsonReader: a pull parser for untrusted JSON (safetensors headers). Nothing is built, so a
// hostile document costs O(nesting) memory plus the strings the caller takes.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
module dcp.json;
import dcp.error;

namespace dcp::json {
namespace {

void append_utf8(std::string& out, std::uint32_t code) {
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

JsonReader::JsonReader(std::string_view text, std::uint64_t base_offset, std::size_t max_depth)
    : text_(text), base_(base_offset), max_depth_(max_depth) {}

void JsonReader::fail(std::string message, std::size_t at) const {
  throw Error(Errc::data_loss, "JSON: " + std::move(message)).at_offset(base_ + at);
}

void JsonReader::skip_space() {
  while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
    ++pos_;
}

std::uint64_t JsonReader::offset() {
  skip_space();
  return base_ + pos_;
}

JsonReader::Kind JsonReader::peek() {
  skip_space();
  if (pos_ >= text_.size()) fail("unexpected end of text", pos_);
  switch (text_[pos_]) {
    case 'n': return Kind::null;
    case 't':
    case 'f': return Kind::boolean;
    case '"': return Kind::string;
    case '[': return Kind::array;
    case '{': return Kind::object;
    default:
      if (text_[pos_] == '-' || is_digit(text_[pos_])) return Kind::number;
      fail("unexpected character", pos_);
  }
}

void JsonReader::expect(char c) {
  skip_space();
  if (pos_ >= text_.size() || text_[pos_] != c) fail(std::string("expected '") + c + "'", pos_);
  ++pos_;
}

void JsonReader::before_item() {
  if (first_.back()) first_.back() = false;
  else expect(',');
}

void JsonReader::open(Kind kind, const char* what) {
  if (peek() != kind) fail(std::string("expected ") + what, pos_);
  if (first_.size() >= max_depth_)
    throw Error(Errc::out_of_range, "JSON nested deeper than " + std::to_string(max_depth_) + " levels").at_offset(base_ + pos_);
  ++pos_;
  first_.push_back(true);
}

void JsonReader::begin_object() { open(Kind::object, "an object"); }

std::optional<std::string> JsonReader::next_key() {
  skip_space();
  if (pos_ < text_.size() && text_[pos_] == '}') {
    ++pos_;
    first_.pop_back();
    return std::nullopt;
  }
  before_item();
  if (peek() != Kind::string) fail("expected a member name", pos_);
  std::string key = string();
  expect(':');
  return key;
}

void JsonReader::begin_array() { open(Kind::array, "an array"); }

bool JsonReader::next_element() {
  skip_space();
  if (pos_ < text_.size() && text_[pos_] == ']') {
    ++pos_;
    first_.pop_back();
    return false;
  }
  before_item();
  return true;
}

std::uint32_t JsonReader::hex4() {
  if (text_.size() - pos_ < 4) fail("truncated \\u escape", pos_);
  std::uint32_t code = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = text_[pos_++];
    code <<= 4;
    if (is_digit(c)) code |= static_cast<std::uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') code |= static_cast<std::uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') code |= static_cast<std::uint32_t>(c - 'A' + 10);
    else fail("bad \\u escape", pos_ - 1);
  }
  return code;
}

std::string JsonReader::string() {
  if (peek() != Kind::string) fail("expected a string", pos_);
  const std::size_t start = pos_++;
  std::string out;
  while (true) {
    if (pos_ >= text_.size()) fail("unterminated string", start);
    const char c = text_[pos_++];
    if (c == '"') return out;
    if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string", pos_ - 1);
    if (c != '\\') {
      out.push_back(c);
      continue;
    }
    if (pos_ >= text_.size()) fail("unterminated string", start);
    switch (const char e = text_[pos_++]) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        std::uint32_t code = hex4();
        // A high surrogate followed by an escaped low one is one code point.
        if (code >= 0xD800 && code < 0xDC00 && text_.substr(pos_, 2) == "\\u") {
          const std::size_t save = pos_;
          pos_ += 2;
          const std::uint32_t low = hex4();
          if (low >= 0xDC00 && low < 0xE000) code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          else pos_ = save;
        }
        append_utf8(out, code);
        break;
      }
      default: (void)e; fail("bad escape", pos_ - 1);
    }
  }
}

std::uint64_t JsonReader::uint64() {
  if (peek() != Kind::number) fail("expected a number", pos_);
  const std::size_t start = pos_;
  if (text_[pos_] == '-') fail("expected a non-negative integer", start);
  std::uint64_t value = 0;
  while (pos_ < text_.size() && is_digit(text_[pos_])) {
    const auto digit = static_cast<std::uint64_t>(text_[pos_] - '0');
    if (value > (UINT64_MAX - digit) / 10)
      throw Error(Errc::out_of_range, "JSON: integer does not fit 64 bits").at_offset(base_ + start);
    value = value * 10 + digit;
    ++pos_;
  }
  if (pos_ - start > 1 && text_[start] == '0') fail("leading zero in a number", start);
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E'))
    fail("expected an integer", start);
  return value;
}

void JsonReader::number() {
  const std::size_t start = pos_;
  if (text_[pos_] == '-') ++pos_;
  auto digits = [&] {
    const std::size_t from = pos_;
    while (pos_ < text_.size() && is_digit(text_[pos_])) ++pos_;
    if (pos_ == from) fail("malformed number", start);
  };
  const std::size_t int_start = pos_;
  digits();
  if (pos_ - int_start > 1 && text_[int_start] == '0') fail("leading zero in a number", start);
  if (pos_ < text_.size() && text_[pos_] == '.') {
    ++pos_;
    digits();
  }
  if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
    ++pos_;
    if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
    digits();
  }
}

void JsonReader::literal(std::string_view word) {
  if (text_.substr(pos_, word.size()) != word) fail("unexpected character", pos_);
  pos_ += word.size();
}

void JsonReader::skip() {
  switch (peek()) {
    case Kind::null: return literal("null");
    case Kind::boolean: return literal(text_[pos_] == 't' ? "true" : "false");
    case Kind::number: return number();
    case Kind::string: (void)string(); return;
    case Kind::array:
      begin_array();
      while (next_element()) skip();  // depth is bounded by max_depth
      return;
    case Kind::object:
      begin_object();
      while (next_key()) skip();
      return;
  }
}

void JsonReader::finish() {
  skip_space();
  if (pos_ != text_.size()) fail("trailing characters after the JSON value", pos_);
}

}  // namespace dcp::json
