// Locations with a scheme (`s3://bucket/prefix`): the backends that modules above this one
// register, so that open_reader / open_writer stay the one place a location becomes storage.
module;
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
module dcp.storage;
import dcp.error;

namespace dcp::storage {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, SchemeBackend, std::less<>> backends;
};

// A function-local static: backends register from static initializers of other libraries,
// whose order against this unit's is unspecified.
Registry& registry() {
  static Registry instance;
  return instance;
}

SchemeBackend backend_of(std::string_view location) {
  const auto scheme = scheme_of(location);
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  const auto it = r.backends.find(scheme);
  if (it == r.backends.end())
    throw Error(Errc::invalid_argument, "this build of dcpp has no storage backend for " + std::string(scheme) +
                                            ":// locations")
        .in_file(location);
  return it->second;
}

}  // namespace

std::string_view scheme_of(std::string_view location) noexcept {
  const auto colon = location.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  const auto scheme = location.substr(0, colon);
  for (char c : scheme)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.')) return {};
  return scheme;
}

void register_scheme(std::string scheme, SchemeBackend backend) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.backends.insert_or_assign(std::move(scheme), std::move(backend));
}

std::unique_ptr<StorageReader> open_scheme_reader(std::string_view location, const ReadOptions& options) {
  const auto backend = backend_of(location);
  if (!backend.reader)
    throw Error(Errc::unimplemented, "reading is not implemented for this storage backend").in_file(location);
  return backend.reader(location, options);
}

std::unique_ptr<StorageWriter> open_writer(const std::filesystem::path& location, WriteOptions options) {
  if (scheme_of(location.native()).empty()) return std::make_unique<FileSystemWriter>(location, std::move(options));
  const auto backend = backend_of(location.native());
  if (!backend.writer)
    throw Error(Errc::unimplemented, "writing is not implemented for this storage backend").in_file(location.native());
  return backend.writer(location.native(), options);
}

}  // namespace dcp::storage
