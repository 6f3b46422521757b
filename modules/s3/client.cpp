// The S3 operations dcpp uses, over Client::attempt: whole and ranged GETs (resuming at the
// byte reached), HEAD, ListObjectsV2, PUT, multipart uploads and DELETE, with retries on
// transport failures, 5xx and throttling.
module;
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>
module dcp.s3;
import dcp.error;
import dcp.zip;

namespace dcp::s3 {
namespace {

bool is_transient(const Response& r) {
  if (r.status == 0 || r.status == 429 || r.status == 500 || r.status == 502 || r.status == 503 || r.status == 504)
    return true;
  // S3's own words for "try again": a slow request, or throttling under another status.
  return r.body.find("<Code>RequestTimeout</Code>") != std::string::npos ||
         r.body.find("<Code>SlowDown</Code>") != std::string::npos;
}

std::string base64(std::span<const std::uint8_t> bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::uint32_t n = std::uint32_t{bytes[i]} << 16 | (i + 1 < bytes.size() ? std::uint32_t{bytes[i + 1]} << 8 : 0) |
                            (i + 2 < bytes.size() ? bytes[i + 2] : 0);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kAlphabet[n & 63] : '=';
  }
  return out;
}

std::string attempts_text(int attempts) {
  return attempts > 1 ? " (after " + std::to_string(attempts) + " attempts)" : "";
}

std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t n = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

}  // namespace

std::string Client::url(const std::string& bucket, const std::string& key) {
  return "s3://" + bucket + (key.empty() ? "" : "/" + key);
}

void Client::backoff(int attempt) const {
  // Full jitter: ranks that failed together do not come back together.
  const auto cap = std::min<std::chrono::milliseconds::rep>(5000, options_.backoff.count() << std::min(attempt, 16));
  thread_local std::mt19937_64 random(std::random_device{}());
  std::uniform_int_distribution<std::chrono::milliseconds::rep> pick(cap / 2, std::max<std::chrono::milliseconds::rep>(cap, 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(pick(random)));
}

Response Client::send(const Request& request, std::initializer_list<int> accept) {
  std::string failure;
  for (int attempt = 1;; ++attempt) {
    std::uint64_t received = 0;
    auto response = this->attempt(request, {}, received, failure);
    const bool accepted = response.status / 100 == 2 || std::find(accept.begin(), accept.end(), response.status) != accept.end();
    if (accepted && !(response.status == 200 && response.body.starts_with("<?xml") &&
                      response.body.find("<Error>") != std::string::npos))
      return response;
    if (!is_transient(response) || attempt >= options_.max_attempts) {
      const auto what = request.method + " failed" + attempts_text(attempt);
      if (response.status == 0) throw Error(Errc::io, what + ": " + failure).in_file(url(request.bucket, request.key));
      throw response_error(response, url(request.bucket, request.key), what);
    }
    retries_.fetch_add(1, std::memory_order_relaxed);
    backoff(attempt);
  }
}

std::optional<ObjectHead> Client::head(const std::string& bucket, const std::string& key) {
  auto response = send(Request{"HEAD", bucket, key, {}, {}, {}}, {404});
  if (response.status == 404) return std::nullopt;
  const auto size = parse_size(response.header("content-length"));
  if (!size) throw Error(Errc::io, "HEAD gave no object size").in_file(url(bucket, key));
  return ObjectHead{*size, response.header("etag")};
}

std::optional<std::vector<std::byte>> Client::get_object(const std::string& bucket, const std::string& key,
                                                         std::uint64_t max_bytes, std::string* etag) {
  const auto head = this->head(bucket, key);
  if (!head) return std::nullopt;
  if (head->size > max_bytes)
    throw Error(Errc::out_of_range, "object of " + std::to_string(head->size) + " bytes exceeds the limit of " +
                                        std::to_string(max_bytes))
        .in_file(url(bucket, key));
  std::vector<std::byte> bytes(static_cast<std::size_t>(head->size));
  if (!bytes.empty()) {
    const Segment whole{bytes.data(), bytes.size()};
    get_range(bucket, key, head->etag, 0, std::span(&whole, 1));
  }
  if (etag) *etag = head->etag;
  return bytes;
}

void Client::get_range(const std::string& bucket, const std::string& key, const std::string& etag, std::uint64_t offset,
                       std::span<const Segment> segments) {
  std::uint64_t total = 0;
  for (const auto& s : segments) total += s.size;
  if (total == 0) return;
  std::uint64_t done = 0;
  std::vector<Segment> rest;
  std::string failure;
  int attempt = 0;  // tries since the last one that made progress
  while (done < total) {
    // The segments from byte `done` on.
    rest.clear();
    std::uint64_t skip = done;
    for (const auto& s : segments) {
      if (skip >= s.size) {
        skip -= s.size;
        continue;
      }
      rest.push_back({s.data ? s.data + skip : nullptr, s.size - skip});
      skip = 0;
    }
    Request request{"GET", bucket, key, {},
                    {{"range", "bytes=" + std::to_string(offset + done) + "-" + std::to_string(offset + total - 1)}}, {}};
    if (!etag.empty()) request.headers.emplace_back("if-match", etag);
    std::uint64_t got = 0;
    const auto response = this->attempt(request, rest, got, failure);
    done += got;
    ++attempt;
    if (got > 0) attempt = 0;
    if (response.status == 206 && done == total) return;
    auto located = [&](Error e) {
      e.in_file(url(bucket, key));
      e.at_offset(offset + done);
      return e;
    };
    if (response.status == 412)
      throw located(Error(Errc::data_loss, "the object changed while it was read (its ETag is no longer " + etag + ")"));
    if (response.status / 100 == 2 && response.status != 206)
      throw located(Error(Errc::io, "the store answered a ranged read with HTTP " + std::to_string(response.status)));
    if (response.status != 0 && !is_transient(response))
      throw located(response_error(response, url(bucket, key), "GET failed"));
    if (attempt >= options_.max_attempts) {
      if (response.status == 0)
        throw located(Error(Errc::io, "GET failed" + attempts_text(attempt) + ": " + failure));
      throw located(response_error(response, url(bucket, key), "GET failed" + attempts_text(attempt)));
    }
    retries_.fetch_add(1, std::memory_order_relaxed);
    if (got == 0) backoff(attempt);
  }
}

std::vector<std::pair<std::string, ObjectHead>> Client::list(const std::string& bucket, const std::string& prefix,
                                                             bool delimiter, std::uint64_t max_keys) {
  std::vector<std::pair<std::string, ObjectHead>> out;
  std::string token;
  for (;;) {
    Request request{"GET", bucket, "", {{"list-type", "2"}, {"prefix", prefix}}, {}, {}};
    if (delimiter) request.query.emplace_back("delimiter", "/");
    if (!token.empty()) request.query.emplace_back("continuation-token", token);
    const auto response = send(request);
    for (auto contents : xml_elements(response.body, "Contents")) {
      const auto keys = xml_values(contents, "Key");
      const auto sizes = xml_values(contents, "Size");
      const auto etags = xml_values(contents, "ETag");
      const auto size = sizes.empty() ? std::nullopt : parse_size(sizes.front());
      if (keys.empty() || !size) throw Error(Errc::io, "a listing entry without key or size").in_file(url(bucket, prefix));
      if (out.size() >= max_keys)
        throw Error(Errc::resource_exhausted, "more than " + std::to_string(max_keys) + " objects under this prefix")
            .in_file(url(bucket, prefix));
      out.emplace_back(keys.front(), ObjectHead{*size, etags.empty() ? std::string() : etags.front()});
    }
    const auto truncated = xml_values(response.body, "IsTruncated");
    const auto next = xml_values(response.body, "NextContinuationToken");
    if (truncated.empty() || truncated.front() != "true" || next.empty() || next.front().empty()) return out;
    token = next.front();
  }
}

std::string Client::put(const std::string& bucket, const std::string& key, std::span<const std::byte> body,
                        std::vector<std::pair<std::string, std::string>> headers) {
  const auto crc = zip::crc32(body);
  const std::array<std::uint8_t, 4> big_endian = {static_cast<std::uint8_t>(crc >> 24), static_cast<std::uint8_t>(crc >> 16),
                                                  static_cast<std::uint8_t>(crc >> 8), static_cast<std::uint8_t>(crc)};
  headers.emplace_back("x-amz-checksum-crc32", base64(big_endian));
  const auto response = send(Request{"PUT", bucket, key, {}, std::move(headers), body});
  return response.header("etag");
}

std::string Client::create_upload(const std::string& bucket, const std::string& key) {
  const auto response = send(Request{"POST", bucket, key, {{"uploads", ""}}, {}, {}});
  const auto ids = xml_values(response.body, "UploadId");
  if (ids.empty() || ids.front().empty()) throw Error(Errc::io, "no UploadId in the store's answer").in_file(url(bucket, key));
  return ids.front();
}

std::string Client::upload_part(const std::string& bucket, const std::string& key, const std::string& upload_id, int number,
                                std::span<const std::byte> body) {
  const auto crc = zip::crc32(body);
  const std::array<std::uint8_t, 4> big_endian = {static_cast<std::uint8_t>(crc >> 24), static_cast<std::uint8_t>(crc >> 16),
                                                  static_cast<std::uint8_t>(crc >> 8), static_cast<std::uint8_t>(crc)};
  const auto checksum = base64(big_endian);
  const auto response = send(Request{"PUT", bucket, key, {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}},
                                     {{"x-amz-checksum-crc32", checksum}}, body});
  // A store that checks the checksum echoes it; one that answers with another has stored
  // other bytes.
  if (const auto echoed = response.header("x-amz-checksum-crc32"); !echoed.empty() && echoed != checksum)
    throw Error(Errc::data_loss, "part " + std::to_string(number) + " was stored with CRC-32 " + echoed + ", not " + checksum)
        .in_file(url(bucket, key));
  const auto etag = response.header("etag");
  if (etag.empty()) throw Error(Errc::io, "no ETag for part " + std::to_string(number)).in_file(url(bucket, key));
  return etag;
}

void Client::complete_upload(const std::string& bucket, const std::string& key, const std::string& upload_id,
                             const std::vector<std::string>& part_etags) {
  std::string xml = "<CompleteMultipartUpload>";
  for (std::size_t i = 0; i < part_etags.size(); ++i)
    xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + xml_escape(part_etags[i]) + "</ETag></Part>";
  xml += "</CompleteMultipartUpload>";
  (void)send(Request{"POST", bucket, key, {{"uploadId", upload_id}}, {{"content-type", "application/xml"}},
                     std::as_bytes(std::span(xml.data(), xml.size()))});
}

void Client::abort_upload(const std::string& bucket, const std::string& key, const std::string& upload_id) {
  (void)send(Request{"DELETE", bucket, key, {{"uploadId", upload_id}}, {}, {}}, {404});
}

void Client::remove(const std::string& bucket, const std::string& key) {
  (void)send(Request{"DELETE", bucket, key, {}, {}, {}}, {404});
}

}  // namespace dcp::s3
