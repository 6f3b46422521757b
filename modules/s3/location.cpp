// `s3://` locations, options from the environment, and reading S3's XML answers.
module;
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>
module dcp.s3;
import dcp.error;

namespace dcp::s3 {
namespace {

constexpr std::string_view kScheme = "s3://";

// S3's bucket naming rules, loosely: what a store accepts beyond them is not ours to refuse,
// but nothing that would change the request's host or path gets through.
bool is_bucket_name(std::string_view name) {
  if (name.size() < 3 || name.size() > 63) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
          (c >= 'A' && c <= 'Z')))
      return false;
  return true;
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string unescape_xml(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '&') {
      out += text[i];
      continue;
    }
    const auto end = text.find(';', i);
    if (end == std::string_view::npos) {
      out += text.substr(i);
      break;
    }
    const auto entity = text.substr(i + 1, end - i - 1);
    if (entity == "amp") out += '&';
    else if (entity == "lt") out += '<';
    else if (entity == "gt") out += '>';
    else if (entity == "quot") out += '"';
    else if (entity == "apos") out += '\'';
    else if (entity.starts_with("#")) {
      unsigned code = 0;
      const bool is_hex = entity.size() > 1 && (entity[1] == 'x' || entity[1] == 'X');
      const auto digits = entity.substr(is_hex ? 2 : 1);
      const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), code, is_hex ? 16 : 10);
      if (ec != std::errc() || p != digits.data() + digits.size() || code > 0x10ffff) {
        out += text.substr(i, end - i + 1);
      } else if (code < 0x80) {
        out += static_cast<char>(code);
      } else if (code < 0x800) {
        out += static_cast<char>(0xc0 | (code >> 6));
        out += static_cast<char>(0x80 | (code & 0x3f));
      } else if (code < 0x10000) {
        out += static_cast<char>(0xe0 | (code >> 12));
        out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (code & 0x3f));
      } else {
        out += static_cast<char>(0xf0 | (code >> 18));
        out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (code & 0x3f));
      }
    } else {
      out += text.substr(i, end - i + 1);
    }
    i = end;
  }
  return out;
}

}  // namespace

bool is_s3_url(std::string_view location) noexcept { return location.starts_with(kScheme); }

std::string Location::key(std::string_view name) const {
  if (prefix.empty()) return std::string(name);
  return prefix + "/" + std::string(name);
}

std::string Location::url(std::string_view name) const {
  std::string out = std::string(kScheme) + bucket;
  if (!prefix.empty()) out += "/" + prefix;
  if (!name.empty()) out += "/" + std::string(name);
  return out;
}

Location parse_url(std::string_view url) {
  auto fail = [&](std::string why) -> Location {
    throw Error(Errc::invalid_argument, "not an object-store location (s3://bucket/prefix): " + why).in_file(url);
  };
  if (!is_s3_url(url)) return fail("it does not start with s3://");
  auto rest = url.substr(kScheme.size());
  while (rest.ends_with('/')) rest.remove_suffix(1);
  Location location;
  const auto slash = rest.find('/');
  location.bucket = std::string(rest.substr(0, slash));
  if (!is_bucket_name(location.bucket)) return fail("'" + location.bucket + "' is not a bucket name");
  if (slash != std::string_view::npos) location.prefix = std::string(rest.substr(slash + 1));
  for (std::size_t start = 0; !location.prefix.empty();) {
    const auto end = location.prefix.find('/', start);
    const auto segment = std::string_view(location.prefix).substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") return fail("the prefix has an empty, '.' or '..' segment");
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return location;
}

Options options_from_environment() {
  Options options;
  options.endpoint = environment("AWS_ENDPOINT_URL_S3");
  if (options.endpoint.empty()) options.endpoint = environment("AWS_ENDPOINT_URL");
  if (auto region = environment("AWS_REGION"); !region.empty()) options.region = region;
  else if (auto fallback = environment("AWS_DEFAULT_REGION"); !fallback.empty()) options.region = fallback;
  options.credentials.access_key = environment("AWS_ACCESS_KEY_ID");
  options.credentials.secret_key = environment("AWS_SECRET_ACCESS_KEY");
  options.credentials.session_token = environment("AWS_SESSION_TOKEN");
  if (options.credentials.access_key.empty() != options.credentials.secret_key.empty())
    throw Error(Errc::invalid_argument,
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (neither: anonymous access)");
  const auto addressing = environment("DCPP_S3_ADDRESSING");
  if (addressing == "path") options.addressing = Addressing::path;
  else if (addressing == "virtual") options.addressing = Addressing::virtual_host;
  else if (!addressing.empty() && addressing != "auto")
    throw Error(Errc::invalid_argument, "DCPP_S3_ADDRESSING must be path, virtual or auto, not '" + addressing + "'");
  if (const auto requests = environment("DCPP_S3_MAX_REQUESTS"); !requests.empty()) {
    int n = 0;
    const auto [p, ec] = std::from_chars(requests.data(), requests.data() + requests.size(), n);
    if (ec != std::errc() || p != requests.data() + requests.size() || n < 1 || n > 1024)
      throw Error(Errc::invalid_argument, "DCPP_S3_MAX_REQUESTS must be a number from 1 to 1024, not '" + requests + "'");
    options.max_requests = n;
  }
  if (const auto part = environment("DCPP_S3_PART_BYTES"); !part.empty()) {
    std::uint64_t n = 0;
    const auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), n);
    if (ec != std::errc() || p != part.data() + part.size() || n < kMinPartBytes || n > (std::uint64_t{5} << 30))
      throw Error(Errc::invalid_argument, "DCPP_S3_PART_BYTES must be a number of bytes from 5 MiB to 5 GiB, not '" + part + "'");
    options.part_bytes = n;
  }
  return options;
}

std::vector<std::string_view> xml_elements(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  for (std::size_t at = 0;;) {
    const auto start = xml.find(open, at);
    if (start == std::string_view::npos) break;
    const auto end = xml.find(close, start + open.size());
    if (end == std::string_view::npos) break;
    out.push_back(xml.substr(start + open.size(), end - start - open.size()));
    at = end + close.size();
  }
  return out;
}

std::vector<std::string> xml_values(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  for (auto element : xml_elements(xml, tag)) out.push_back(unescape_xml(element));
  return out;
}

std::string Response::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return {};
}

Error response_error(const Response& response, std::string_view url, std::string_view what) {
  const auto codes = xml_values(response.body, "Code");
  const auto messages = xml_values(response.body, "Message");
  std::string message = std::string(what) + ": HTTP " + std::to_string(response.status);
  if (!codes.empty()) message += " " + codes.front();
  if (!messages.empty()) message += " (" + messages.front().substr(0, 200) + ")";
  Errc code = Errc::io;
  switch (response.status) {
    case 404: code = Errc::not_found; break;
    case 401:
    case 403: code = Errc::permission_denied; break;
    case 412: code = Errc::failed_precondition; break;
    case 416: code = Errc::out_of_range; break;
    default: break;
  }
  return std::move(Error(code, message).in_file(url));
}

}  // namespace dcp::s3
