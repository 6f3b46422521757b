// dcp.error — the one error type of dcpp, and the checked arithmetic that produces it.
//
// Every failure in dcpp is a `dcp::Error`: a closed `Errc` code, a one-line lowercase message
// and an `ErrorContext` (file, state-dict key or record name, byte offset, rank) that each
// layer fills in as the error passes through it, like LLVM's FileError. Deep code throws
// `dcp::Error`; module edges convert foreign errors (system_error, c10::Error) into it.
// Where an exception must not cross (a worker thread, an Asio handler, a collective), the
// error crosses as a value: a `std::optional<Error>` slot filled by `current_exception_as_error`
// in the catch block, rethrown or sent on the other side; `Result<T>` keeps an outcome for
// later (value or Error). `parallel_for` runs independent checks on several threads and reports the
// failure of the first item, as a loop would; `hash_mix` / `hash_text` are the seeded hashes
// of every table that untrusted input fills; `escape_text` is how every printer spells text
// from a file (keys, paths) for a terminal. Imports nothing.
module;
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
export module dcp.error;

export namespace dcp {

/// What went wrong, in abseil's sense. Switches over it keep a `default:`.
enum class Errc : int {
  invalid_argument = 1,  ///< the caller asked for something malformed (bad flag, bad key regex)
  not_found,             ///< a file, key or record that must exist does not
  data_loss,             ///< the checkpoint is corrupt or truncated
  out_of_range,          ///< a size, offset or count past a limit or past the end of a file
  failed_precondition,   ///< the request contradicts the checkpoint (shape or dtype mismatch)
  unimplemented,         ///< a valid format variant dcpp does not support yet
  io,                    ///< the operating system refused a read or write (errno in message)
  cancelled,             ///< the operation was stopped by the caller
  permission_denied,     ///< a pickle names a global outside the allow-list
  internal,              ///< a bug in dcpp
  resource_exhausted,    ///< a budget or the machine's memory ran out (hostile or huge input)
};

/// The code's stable lowercase name, e.g. "data_loss".
std::string_view errc_name(Errc code) noexcept;

/// Where an error happened; each layer fills in what it knows.
struct ErrorContext {
  std::string file;                          ///< path of the file being read or written
  std::string key;                           ///< state-dict key (fqn) or record name
  std::optional<std::uint64_t> byte_offset;  ///< offset in `file` (or in the buffer parsed)
  std::optional<int> rank;                   ///< process-group rank that failed
};

/// A dcpp failure: code + message + context. Thrown by value, caught by const reference.
class [[nodiscard]] Error : public std::exception {
 public:
  Error(Errc code, std::string message);

  Errc code() const noexcept { return code_; }
  /// The bare message, without context ("unknown opcode 0xff").
  const std::string& message() const noexcept { return message_; }
  const ErrorContext& context() const noexcept { return context_; }

  /// Context setters. Inner layers know more precise facts, so a field already set wins;
  /// the exception is `add_offset`, which moves a buffer-relative offset into file space.
  Error& in_file(std::string_view path);
  Error& for_key(std::string_view key);
  Error& at_offset(std::uint64_t offset);
  Error& add_offset(std::uint64_t base);
  Error& on_rank(int rank);

  /// One line: "FILE: key 'K': byte N: message" (parts that are unknown are left out), each
  /// part escaped (escape_text: the file and key as names, the message as a message) and
  /// clamped (kMaxPartChars), so an error stays one short line a terminal shows as it is,
  /// whatever the input held.
  const char* what() const noexcept override { return text_.c_str(); }

  static constexpr std::size_t kMaxPartChars = 400;

 private:
  void render();
  Errc code_;
  std::string message_;
  ErrorContext context_;
  std::string text_;
};

/// How escape_text spells a backslash: doubled in a name (a key, a path), so that the text
/// printed spells one name only; kept in a message, whose own text may hold escapes.
enum class Escape : bool { name, message };

/// Text from a file or a command line (a key, a path, a name a message quotes), ready for a
/// terminal and for one line: valid UTF-8 stays as it is, except the controls a terminal
/// acts on: "\n", "\r", "\t", "\xHH" for the other C0 bytes and DEL ("\x1b" for ESC),
/// "\u0080".."\u009f" for the C1 controls; each byte that is not part of valid UTF-8
/// (a lone surrogate's too) is "\xHH". Appends at most `max_chars` characters of the
/// escaped text, never half an escape or half a character, then "..." when it stopped short.
void append_escaped(std::string& out, std::string_view text, Escape style,
                    std::size_t max_chars = std::string_view::npos);
/// append_escaped into a new string, unclamped.
std::string escape_text(std::string_view text, Escape style = Escape::name);

/// The UTF-8 sequence at text[i]: its length (1 to 4) with its code point in `code`, or 0 when
/// the bytes there are not one (a stray continuation byte, an overlong form, a sequence cut
/// short, past U+10FFFF). Surrogate code points (ED A0..BF xx) decode: callers decide.
std::size_t decode_utf8(std::string_view text, std::size_t i, char32_t& code) noexcept;

/// A value or an Error: a result kept for later (a cache of outcomes) or handed across a
/// boundary that exceptions must not cross.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}
  Result(Error error) : state_(std::move(error)) {}
  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  /// The value; throws the stored Error if there is none.
  T& value() & {
    if (!ok()) throw std::get<1>(state_);
    return std::get<0>(state_);
  }
  T&& value() && {
    if (!ok()) throw std::get<1>(state_);
    return std::get<0>(std::move(state_));
  }
  const Error& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, Error> state_;
};

/// Throws Error(code, message) naming the state-dict key `fqn`.
[[noreturn]] void fail_for_key(Errc code, std::string_view fqn, std::string message);

/// The exception in flight (call inside a catch block) as an Error: a dcp::Error as it is,
/// std::bad_alloc as resource_exhausted ("out of memory"), anything else as internal. Used
/// where work crosses a thread-pool boundary, so nothing escapes a worker.
Error current_exception_as_error();

/// Runs task(i) for every i in [0, count) and rethrows the exception of the lowest i that threw
/// (tasks after it may be skipped). With `work` (the caller's measure of the whole job, e.g.
/// chunks) of at least 2^16, on up to min(hardware threads, 16) threads; below it, in order
/// on this thread. For independent checks of many items (the coordinator's per-tensor checks
/// at thousands of ranks): errors stay deterministic whatever the threads do.
void parallel_for(std::size_t count, std::uint64_t work, const std::function<void(std::size_t)>& task);

/// Hashes for tables that untrusted input fills, seeded by a random number drawn once per
/// process: a hostile file cannot choose keys that collide when it cannot know the hash. Every
/// bit of the input reaches every bit of the hash (no multiplicative shortcut whose low bits
/// see only low bits). Not stable across processes: never store or send them.
std::uint64_t hash_mix(std::uint64_t value) noexcept;
std::uint64_t hash_text(std::string_view text) noexcept;

/// Runs `fn` and turns a thrown dcp::Error into a Result (other exceptions pass through).
template <class Fn>
auto capture(Fn&& fn) -> Result<decltype(fn())> {
  try {
    return fn();
  } catch (const Error& e) {
    return e;
  }
}

/// "(3, 4)", "(5,)" or "()", torch.Size style, for messages. Shapes from untrusted input can
/// have thousands of dims: past `max_dims` the text ends in "..., N dims)".
std::string format_shape(std::span<const std::int64_t> dims, std::size_t max_dims = 8);

/// Checked unsigned arithmetic: nullopt on overflow. Offsets and sizes read from files go
/// through these before they are compared or used.
std::optional<std::uint64_t> checked_add(std::uint64_t a, std::uint64_t b) noexcept;
std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept;

/// Throws Error(out_of_range) naming `what` when a + b or a * b overflows 64 bits.
std::uint64_t add_or_throw(std::uint64_t a, std::uint64_t b, std::string_view what);
std::uint64_t mul_or_throw(std::uint64_t a, std::uint64_t b, std::string_view what);

}  // namespace dcp
