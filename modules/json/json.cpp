// JSON string escaping and the writer's bookkeeping.
module;
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <string_view>
#include <vector>
module dcp.json;
import dcp.error;

namespace dcp::json {
namespace {

void append_escape(std::string& out, unsigned code) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\u%04x", code);
  out += buf;
}

}  // namespace

void append_quoted(std::string& out, std::string_view text) {
  out.push_back('"');
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        default:
          if (c < 0x20 || c == 0x7F) append_escape(out, c);  // DEL too: the text may reach a terminal
          else out.push_back(static_cast<char>(c));
      }
      ++i;
      continue;
    }
    char32_t code = 0;
    const std::size_t len = decode_utf8(text, i, code);
    if (len == 0) {
      append_escape(out, 0xFFFD);
      ++i;
    } else if ((code >= 0xD800 && code <= 0xDFFF) || (code >= 0x80 && code <= 0x9F)) {  // C1 controls too
      append_escape(out, static_cast<unsigned>(code));
      i += len;
    } else {
      out.append(text.substr(i, len));
      i += len;
    }
  }
  out.push_back('"');
}

void JsonWriter::newline() {
  if (indent_ <= 0) return;
  out_.push_back('\n');
  out_.append(first_.size() * static_cast<std::size_t>(indent_), ' ');
}

void JsonWriter::before_value() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) out_.push_back(',');
    first_.back() = false;
    newline();
  }
}

JsonWriter& JsonWriter::begin_object() {
  before_value();
  out_.push_back('{');
  first_.push_back(true);
  return *this;
}

JsonWriter& JsonWriter::end_object() {
  const bool empty = first_.back();
  first_.pop_back();
  if (!empty) newline();
  out_.push_back('}');
  return *this;
}

JsonWriter& JsonWriter::begin_array() {
  before_value();
  out_.push_back('[');
  first_.push_back(true);
  return *this;
}

JsonWriter& JsonWriter::end_array() {
  const bool empty = first_.back();
  first_.pop_back();
  if (!empty) newline();
  out_.push_back(']');
  return *this;
}

JsonWriter& JsonWriter::key(std::string_view name) {
  before_value();
  append_quoted(out_, name);
  out_ += indent_ > 0 ? ": " : ":";
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::value(std::string_view text) {
  before_value();
  append_quoted(out_, text);
  return *this;
}

JsonWriter& JsonWriter::value(std::int64_t number) {
  before_value();
  out_ += std::to_string(number);
  return *this;
}

JsonWriter& JsonWriter::value(std::uint64_t number) {
  before_value();
  out_ += std::to_string(number);
  return *this;
}

JsonWriter& JsonWriter::value(double number) {
  before_value();
  if (std::isnan(number)) {
    out_ += "NaN";  // what Python's json module writes and reads
  } else if (std::isinf(number)) {
    out_ += number > 0 ? "Infinity" : "-Infinity";
  } else {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", number);
    out_ += buf;
    if (std::string_view(buf).find_first_of(".eE") == std::string_view::npos) out_ += ".0";
  }
  return *this;
}

JsonWriter& JsonWriter::value(bool flag) {
  before_value();
  out_ += flag ? "true" : "false";
  return *this;
}

JsonWriter& JsonWriter::null() {
  before_value();
  out_ += "null";
  return *this;
}

JsonWriter& JsonWriter::raw(std::string_view json) {
  before_value();
  out_ += json;
  return *this;
}

JsonWriter& JsonWriter::int_array(std::span<const std::int64_t> numbers) {
  before_value();
  out_.push_back('[');
  for (std::size_t i = 0; i < numbers.size(); ++i) {
    if (i) out_ += indent_ > 0 ? ", " : ",";
    out_ += std::to_string(numbers[i]);
  }
  out_.push_back(']');
  return *this;
}

}  // namespace dcp::json
