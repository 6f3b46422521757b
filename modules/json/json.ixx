// dcp.json — a small streaming JSON writer for dcpp's machine-readable output, and a pull
// reader for the one untrusted JSON dcpp reads (a safetensors header).
//
// `JsonWriter` appends to a string; it tracks commas and nesting, and escapes strings so the
// output is valid UTF-8 JSON even for keys that are not: a lone surrogate (which Python's
// "surrogatepass" lets into DCP keys) becomes a \uXXXX escape that Python's json reads back
// as the same string; bytes that are not UTF-8 at all become U+FFFD. Control characters
// (C0, DEL and C1) are escaped too, so the output is safe on a terminal. `JsonReader` builds
// nothing: the caller pulls the values it expects in document order, so reading costs
// O(nesting) memory plus the strings taken. Imports: dcp.error.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
export module dcp.json;
import dcp.error;

export namespace dcp::json {

/// Appends `text` to `out` as a JSON string literal (with quotes).
void append_quoted(std::string& out, std::string_view text);

class JsonWriter {
 public:
  /// `indent` > 0 pretty-prints with that many spaces per level.
  explicit JsonWriter(int indent = 0) : indent_(indent) {}

  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  /// Object key; the next call writes its value.
  JsonWriter& key(std::string_view name);
  JsonWriter& value(std::string_view text);
  JsonWriter& value(const char* text) { return value(std::string_view(text)); }
  JsonWriter& value(std::int64_t number);
  JsonWriter& value(std::uint64_t number);
  JsonWriter& value(int number) { return value(static_cast<std::int64_t>(number)); }
  JsonWriter& value(double number);
  JsonWriter& value(bool flag);
  JsonWriter& null();
  /// An already-serialized JSON value, inserted verbatim.
  JsonWriter& raw(std::string_view json);
  /// An array of integers, on one line.
  JsonWriter& int_array(std::span<const std::int64_t> numbers);

  const std::string& str() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void before_value();
  void newline();
  std::string out_;
  std::vector<bool> first_;  // per open container: no element written yet
  bool after_key_ = false;
  int indent_;
};

/// A pull reader over untrusted JSON text (RFC 8259). The caller says what it expects next;
/// anything else is Error(data_loss) naming the byte offset (+ `base_offset`, so errors point
/// into the file the text came from). Nesting deeper than `max_depth` is out_of_range.
/// Strings are returned as UTF-8 (a lone \uD800-\uDFFF escape as its 3-byte form, as
/// Python's surrogatepass writes it); raw bytes are passed through unchecked.
class JsonReader {
 public:
  enum class Kind : std::uint8_t { null, boolean, number, string, array, object };
  explicit JsonReader(std::string_view text, std::uint64_t base_offset = 0, std::size_t max_depth = 64);
  /// The kind of the next value (whitespace skipped).
  Kind peek();
  /// File offset of the next non-space byte.
  std::uint64_t offset();
  void begin_object();
  /// The next member's key (its value is next), or nullopt after consuming the closing '}'.
  std::optional<std::string> next_key();
  void begin_array();
  /// True when another element follows; false after consuming the closing ']'.
  bool next_element();
  std::string string();
  /// A non-negative integer literal (no fraction or exponent); out_of_range past 2^64 - 1.
  std::uint64_t uint64();
  /// Skips one value of any kind.
  void skip();
  /// Checks that only whitespace is left.
  void finish();

 private:
  [[noreturn]] void fail(std::string message, std::size_t at) const;
  void skip_space();
  void open(Kind kind, const char* what);  // '{' or '[', within max_depth
  void expect(char c);
  void literal(std::string_view word);
  void number();
  std::uint32_t hex4();
  // Separators: before an element or member after the first, a ','.
  void before_item();
  std::string_view text_;
  std::size_t pos_ = 0;
  std::uint64_t base_;
  std::size_t max_depth_;
  std::vector<bool> first_;  // per open container: no item read yet
};

}  // namespace dcp::json
