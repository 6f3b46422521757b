// HTTP/1.1 to the object store over Boost.Beast: kept-alive connections in a pool, each
// exchange run on its connection's own io_context by the calling thread, every step (resolve,
// connect, handshake, send, each read) under Options::timeout. Response bodies of successful
// ranged reads stream straight into the caller's segments; TLS (https endpoints) through
// OpenSSL when the build has it.
module;
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#if DCP_HAVE_OPENSSL
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>
#endif
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>
module dcp.s3;
import dcp.error;

namespace dcp::s3 {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

struct Endpoint {
  bool tls = false;
  std::string host;
  std::string port;
  std::string authority;  // host[:port] as the Host header says it
};

Endpoint parse_endpoint(std::string_view url) {
  Endpoint e;
  std::string_view rest;
  if (url.starts_with("https://")) {
    e.tls = true;
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else {
    throw Error(Errc::invalid_argument, "the endpoint must start with http:// or https://: '" + std::string(url) + "'");
  }
  while (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string_view::npos)
    throw Error(Errc::invalid_argument, "the endpoint must be scheme://host[:port]: '" + std::string(url) + "'");
  e.authority = std::string(rest);
  const bool bracketed = rest.starts_with('[');
  const auto colon = bracketed ? rest.find("]:") : rest.rfind(':');
  if (colon != std::string_view::npos) {
    e.host = std::string(rest.substr(bracketed ? 1 : 0, colon - (bracketed ? 1 : 0)));
    e.port = std::string(rest.substr(colon + (bracketed ? 2 : 1)));
  } else {
    e.host = std::string(bracketed ? rest.substr(1, rest.size() - 2) : rest);
    e.port = e.tls ? "443" : "80";
  }
  return e;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace

/// One kept-alive connection. Used by one thread at a time (the pool hands it out).
class Connection {
 public:
  Connection(const Endpoint& endpoint, std::chrono::milliseconds timeout, void* tls_context)
      : endpoint_(endpoint), timeout_(timeout), tls_context_(tls_context) {}

  bool reused() const noexcept { return exchanges_ > 0; }
  bool open() const noexcept { return open_; }

  /// Sends a request and reads its response. A 2xx response whose body is `expected` bytes long
  /// goes into `segments`; anything else into response.body (bounded). False, with `failure`
  /// set and the connection closed, on a transport error.
  bool exchange(const http::request<http::empty_body>& request, std::span<const std::byte> body, bool head,
                std::span<const Segment> segments, Response& response, std::uint64_t& received, std::string& failure) {
    try {
      if (!open_ && !connect(failure)) return false;
      ++exchanges_;
      return std::visit(
          [&](auto& stream) { return run_exchange(stream, request, body, head, segments, response, received, failure); },
          stream_);
    } catch (...) {
      failure = current_exception_as_error().message();
      close();
      return false;
    }
  }

  void close() noexcept {
    open_ = false;
    beast::error_code ignored;
    std::visit([&](auto& s) { beast::get_lowest_layer(s).socket().close(ignored); }, stream_);
    buffer_.clear();
  }

 private:
  using Plain = beast::tcp_stream;
#if DCP_HAVE_OPENSSL
  using Secure = beast::ssl_stream<beast::tcp_stream>;
  using Stream = std::variant<Plain, Secure>;
#else
  using Stream = std::variant<Plain>;
#endif

  // Runs one asynchronous operation on this connection's io_context until it completes.
  template <class Start>
  beast::error_code wait(Start&& start) {
    beast::error_code result = asio::error::would_block;
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    io_.restart();
    io_.run();
    return result;
  }

  bool connect(std::string& failure) {
    stream_.template emplace<Plain>(io_);
#if DCP_HAVE_OPENSSL
    if (endpoint_.tls) {
      stream_.template emplace<Secure>(io_, *static_cast<asio::ssl::context*>(tls_context_));
      auto& s = std::get<Secure>(stream_);
      if (!SSL_set_tlsext_host_name(s.native_handle(), endpoint_.host.c_str())) {
        failure = "cannot set the TLS server name";
        return false;
      }
      s.set_verify_callback(asio::ssl::host_name_verification(endpoint_.host));
    }
#else
    if (endpoint_.tls) throw Error(Errc::unimplemented, "this build of dcpp has no TLS (OpenSSL): https endpoints are unavailable");
#endif
    asio::ip::tcp::resolver resolver(io_);
    asio::ip::tcp::resolver::results_type results;
    auto& lowest = std::visit([](auto& s) -> beast::tcp_stream& { return beast::get_lowest_layer(s); }, stream_);
    // The resolver has no deadline of its own: the stream's timer cancels it.
    bool resolved = false;
    beast::error_code ec;
    {
      asio::steady_timer timer(io_, timeout_);
      timer.async_wait([&](beast::error_code e) {
        if (!e) resolver.cancel();
      });
      resolver.async_resolve(endpoint_.host, endpoint_.port, [&](beast::error_code e, auto r) {
        ec = e;
        results = std::move(r);
        resolved = true;
        timer.cancel();
      });
      io_.restart();
      io_.run();
    }
    if (!resolved || ec) {
      failure = "cannot resolve " + endpoint_.host + ": " + (ec ? ec.message() : "timed out");
      return false;
    }
    lowest.expires_after(timeout_);
    ec = wait([&](auto handler) { lowest.async_connect(results, std::move(handler)); });
    if (ec) {
      failure = "cannot connect to " + endpoint_.authority + ": " + ec.message();
      close();
      return false;
    }
    lowest.socket().set_option(asio::ip::tcp::no_delay(true), ec);
#if DCP_HAVE_OPENSSL
    if (endpoint_.tls) {
      lowest.expires_after(timeout_);
      ec = wait([&](auto handler) { std::get<Secure>(stream_).async_handshake(asio::ssl::stream_base::client, std::move(handler)); });
      if (ec) {
        failure = "TLS handshake with " + endpoint_.authority + " failed: " + ec.message();
        close();
        return false;
      }
    }
#endif
    open_ = true;
    return true;
  }

  bool fail(std::string& failure, std::string what, beast::error_code ec = {}) {
    failure = ec ? what + ": " + (ec == beast::error::timeout ? std::string("timed out") : ec.message()) : what;
    close();
    return false;
  }

  template <class S>
  bool run_exchange(S& stream, const http::request<http::empty_body>& request, std::span<const std::byte> body, bool head,
                    std::span<const Segment> segments, Response& response, std::uint64_t& received, std::string& failure) {
    auto& lowest = beast::get_lowest_layer(stream);
    lowest.expires_after(timeout_);
    http::request_serializer<http::empty_body> serializer(request);
    auto ec = wait([&](auto handler) { http::async_write_header(stream, serializer, std::move(handler)); });
    if (ec) return fail(failure, "sending the request failed", ec);
    if (!body.empty()) {
      lowest.expires_after(timeout_);
      ec = wait([&](auto handler) { asio::async_write(stream, asio::buffer(body.data(), body.size()), std::move(handler)); });
      if (ec) return fail(failure, "sending the request body failed", ec);
    }
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (head) parser.skip(true);
    lowest.expires_after(timeout_);
    ec = wait([&](auto handler) { http::async_read_header(stream, buffer_, parser, std::move(handler)); });
    if (ec) return fail(failure, "no response", ec);
    const auto& message = parser.get();
    response.status = static_cast<int>(message.result_int());
    for (const auto& field : message)
      response.headers.emplace_back(lower(std::string_view(field.name_string().data(), field.name_string().size())),
                                    std::string(field.value()));
    std::uint64_t expected = 0;
    for (const auto& s : segments) expected += s.size;
    // Only a partial answer (206) carries the bytes of a ranged read; the caller refuses others.
    const bool into_segments = !segments.empty() && response.status == 206;
    if (!segments.empty() && response.status / 100 == 2 && !into_segments) {
      close();
      return true;
    }
    if (into_segments) {
      const auto length = parser.content_length();
      if (!length || *length != expected)
        return fail(failure, "a response of " + (length ? std::to_string(*length) : std::string("unknown length")) +
                                    " bytes to a read of " + std::to_string(expected));
    }
    std::array<std::byte, 64 << 10> scratch;
    auto read_into = [&](std::byte* data, std::size_t size) -> std::optional<std::size_t> {
      auto& b = parser.get().body();
      b.data = data;
      b.size = size;
      lowest.expires_after(timeout_);
      auto e = wait([&](auto handler) { http::async_read(stream, buffer_, parser, std::move(handler)); });
      if (e == http::error::need_buffer) e = {};
      if (e) {
        (void)fail(failure, "the response broke off", e);
        return std::nullopt;
      }
      return size - parser.get().body().size;
    };
    if (into_segments) {
      for (const auto& segment : segments) {
        for (std::uint64_t done = 0; done < segment.size;) {
          if (parser.is_done()) return fail(failure, "the response ended " + std::to_string(expected - received) + " bytes short");
          const auto want = segment.data ? static_cast<std::size_t>(std::min<std::uint64_t>(segment.size - done, std::size_t{1} << 30))
                                         : static_cast<std::size_t>(std::min<std::uint64_t>(segment.size - done, scratch.size()));
          const auto got = read_into(segment.data ? segment.data + done : scratch.data(), want);
          if (!got) return false;
          done += *got;
          received += *got;
        }
      }
    } else {
      while (!parser.is_done()) {
        const auto got = read_into(scratch.data(), scratch.size());
        if (!got) return false;
        if (response.body.size() + *got > kMaxResponseBytes)
          return fail(failure, "a response body longer than " + std::to_string(kMaxResponseBytes) + " bytes");
        response.body.append(reinterpret_cast<const char*>(scratch.data()), *got);
      }
    }
    if (!parser.is_done()) return fail(failure, "the response is longer than its read");
    if (!parser.keep_alive()) close();
    return true;
  }

  Endpoint endpoint_;
  std::chrono::milliseconds timeout_;
  void* tls_context_;
  asio::io_context io_;
  Stream stream_{std::in_place_type<Plain>, io_};
  beast::flat_buffer buffer_;
  bool open_ = false;
  std::uint64_t exchanges_ = 0;
};

/// Connections kept open between requests, at most Options::max_requests of them idle.
class ConnectionPool {
 public:
  ConnectionPool(const Options& options)
      : endpoint_(parse_endpoint(options.endpoint.empty() ? "https://s3." + options.region + ".amazonaws.com"
                                                          : options.endpoint)),
        timeout_(options.timeout),
        max_idle_(static_cast<std::size_t>(std::max(options.max_requests, 1))) {
#if DCP_HAVE_OPENSSL
    if (endpoint_.tls) {
      tls_.emplace(asio::ssl::context::tls_client);
      tls_->set_default_verify_paths();
      tls_->set_verify_mode(asio::ssl::verify_peer);
    }
#endif
  }
  const Endpoint& endpoint() const noexcept { return endpoint_; }

  std::unique_ptr<Connection> take() {
    {
      std::lock_guard lock(mutex_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
#if DCP_HAVE_OPENSSL
    void* context = tls_ ? static_cast<void*>(&*tls_) : nullptr;
#else
    void* context = nullptr;
#endif
    return std::make_unique<Connection>(endpoint_, timeout_, context);
  }

  void give_back(std::unique_ptr<Connection> c) {
    if (!c->open()) return;
    std::lock_guard lock(mutex_);
    if (idle_.size() < max_idle_) idle_.push_back(std::move(c));
  }

 private:
  Endpoint endpoint_;
  std::chrono::milliseconds timeout_;
  std::size_t max_idle_;
#if DCP_HAVE_OPENSSL
  std::optional<asio::ssl::context> tls_;
#endif
  std::mutex mutex_;
  std::vector<std::unique_ptr<Connection>> idle_;
};

Client::Client(Options options) : options_(std::move(options)), pool_(std::make_unique<ConnectionPool>(options_)) {}

Client::~Client() = default;

Stats Client::stats() const {
  return Stats{requests_.load(), retries_.load(), received_.load(), sent_.load()};
}

Response Client::attempt(const Request& r, std::span<const Segment> segments, std::uint64_t& received,
                         std::string& failure) {
  const auto& endpoint = pool_->endpoint();
  const bool virtual_host = options_.addressing == Addressing::virtual_host ||
                            (options_.addressing == Addressing::automatic && options_.endpoint.empty());
  SigningRequest s;
  s.method = r.method;
  std::string host = endpoint.authority;
  if (virtual_host) {
    host = r.bucket + "." + endpoint.authority;
    s.path = "/" + r.key;
  } else {
    s.path = "/" + r.bucket + (r.key.empty() ? "" : "/" + r.key);
  }
  s.query = r.query;
  s.headers = r.headers;
  s.headers.emplace_back("host", host);
  const bool has_body = r.method == "PUT" || r.method == "POST";
  if (!options_.credentials.anonymous()) {
    // Large bodies are not hashed (a part's CRC-32 protects it instead): SHA-256 in software
    // would cost more than the upload.
    const auto payload = r.body.size() <= (std::size_t{1} << 20) ? sha256_hex(r.body) : std::string(kUnsignedPayload);
    const auto date = amz_date(std::chrono::system_clock::now());
    s.headers.emplace_back("x-amz-date", date);
    s.headers.emplace_back("x-amz-content-sha256", payload);
    if (!options_.credentials.session_token.empty())
      s.headers.emplace_back("x-amz-security-token", options_.credentials.session_token);
    auto signature = authorization(s, payload, options_.credentials, options_.region, "s3", date);
    s.headers.emplace_back("authorization", std::move(signature));
  }
  std::string target = uri_encode(s.path, true);
  for (std::size_t i = 0; i < r.query.size(); ++i)
    target += (i ? "&" : "?") + uri_encode(r.query[i].first, false) +
              (r.query[i].second.empty() && r.query[i].first != "uploadId" ? std::string() : "=" + uri_encode(r.query[i].second, false));
  http::request<http::empty_body> request(http::string_to_verb(r.method), target, 11);
  for (const auto& [k, v] : s.headers) request.set(k, v);
  if (has_body) request.set(http::field::content_length, std::to_string(r.body.size()));
  request.keep_alive(true);

  for (int fresh = 0;; ++fresh) {
    auto connection = pool_->take();
    const bool reused = connection->reused();
    Response response;
    requests_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t got = 0;
    const bool ok = connection->exchange(request, r.body, r.method == "HEAD", segments, response, got, failure);
    received += got;
    received_.fetch_add(got + response.body.size(), std::memory_order_relaxed);
    if (ok) {
      sent_.fetch_add(r.body.size(), std::memory_order_relaxed);
      pool_->give_back(std::move(connection));
      return response;
    }
    // A kept-alive connection the server closed meanwhile fails before any answer: that is not
    // the request's fault, so it goes again at once on a new connection.
    if (reused && response.status == 0 && got == 0 && fresh == 0) continue;
    return Response{};
  }
}

}  // namespace dcp::s3
