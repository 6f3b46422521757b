// dcp.json — a small streaming JSON writer for dcpp's machine-readable output.
//
// `JsonWriter` appends to a string; it tracks commas and nesting, and escapes strings so the
// output is valid UTF-8 JSON even for keys that are not: a lone surrogate (which Python's
// "surrogatepass" lets into DCP keys) becomes a \uXXXX escape that Python's json reads back
// as the same string; bytes that are not UTF-8 at all become U+FFFD. No parser: dcpp never
// reads JSON from untrusted sources. Imports nothing.
module;
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
export module dcp.json;

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
  JsonWriter& int_array(const std::vector<std::int64_t>& numbers);

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

}  // namespace dcp::json
