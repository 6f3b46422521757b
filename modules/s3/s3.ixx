// dcp.s3 — checkpoints in object storage: S3 and every store that speaks its API (MinIO, Ceph
// RGW, SeaweedFS, GCS's interoperability mode), as a StorageReader / StorageWriter pair beside
// the filesystem ones, for locations `s3://bucket/prefix`.
//
// `ObjectStoreReader` reads `.metadata` with one GET, lists the data objects once (their sizes
// bound every storage entry, their ETags pin what every later read must see), and executes a
// LoadPlan as ranged GETs straight into destination memory: each saved item's archive is
// located from a probe of its head and tail, neighbouring ranges of one object are coalesced
// into one request when the gap costs less than another request (Options::coalesce_gap), and
// at most Options::max_requests requests are in flight. A request that fails on a 5xx,
// throttling or a dropped connection is retried with jittered exponential backoff, resuming at
// the byte reached; every GET carries `If-Match: <ETag>`, so an object replaced while it is
// read is an error (data_loss), never a mix of two versions.
//
// `ObjectStoreWriter` writes each rank's items into one data object under a name no other save
// uses (`__{rank}_{save id}.distcp`): a single PUT when it is small, else a multipart upload
// whose parts go up in parallel, each with its CRC-32 (`x-amz-checksum-crc32`, which the
// store verifies). The coordinator writes `.metadata` last with one conditional PUT — the
// commit: `If-None-Match: *` (no checkpoint may appear meanwhile) or, when replacing one,
// `If-Match` of the `.metadata` it checked. A reader therefore never sees a checkpoint whose
// data is incomplete. An aborted save aborts its multipart uploads and deletes the objects it
// created; nothing else is ever deleted (a replaced checkpoint's data objects stay).
//
// HTTP/1.1 over Boost.Beast with keep-alive connection pools, TLS through OpenSSL for `https`
// endpoints when the build has it (DCP_HAVE_OPENSSL), AWS Signature Version 4 (sigv4.cpp; no
// request is signed when no credentials are set: anonymous access). Every wait has a timeout.
// Errors name the object as `s3://bucket/key`, the state-dict key and the byte offset.
// Imports: dcp.error, dcp.layout, dcp.metadata, dcp.planning, dcp.record, dcp.storage, dcp.zip.
module;
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.s3;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.storage;

export namespace dcp::s3 {

/// Whether `location` names an object-store checkpoint (`s3://...`).
bool is_s3_url(std::string_view location) noexcept;

/// A checkpoint's place in a bucket.
struct Location {
  std::string bucket;
  std::string prefix;  ///< "" or "a/b": no leading or trailing '/'
  /// The object key of `name` inside the checkpoint.
  std::string key(std::string_view name) const;
  /// `s3://bucket/prefix[/name]`: how errors name objects.
  std::string url(std::string_view name = {}) const;
};
/// Parses `s3://bucket[/prefix]` (a trailing '/' is dropped). Throws invalid_argument for
/// anything else: another scheme, an empty or malformed bucket name, empty path segments.
Location parse_url(std::string_view url);

struct Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  ///< temporary credentials' token (x-amz-security-token)
  bool anonymous() const noexcept { return access_key.empty(); }
};

/// How a bucket is addressed: `endpoint/bucket/key` or `bucket.endpoint/key`.
enum class Addressing : std::uint8_t {
  automatic,     ///< path style with an explicit endpoint (local stores), virtual host on AWS
  path,
  virtual_host,
};

/// How the object store is reached and how hard it is pushed.
struct Options {
  std::string endpoint;              ///< "http[s]://host[:port]"; empty: https://s3.<region>.amazonaws.com
  std::string region = "us-east-1";  ///< the signing region
  Credentials credentials;           ///< none: anonymous (unsigned) requests
  Addressing addressing = Addressing::automatic;
  int max_requests = 16;  ///< requests in flight per rank (and connections kept open)
  int max_attempts = 6;   ///< tries of one request before its error is final
  std::chrono::milliseconds timeout{30'000};  ///< every wait: connect, send, each read
  std::chrono::milliseconds backoff{100};     ///< first retry's delay (doubling, jittered, at most 5 s)
  /// Ranges of one object closer than this are read with one request (the gap's bytes are
  /// discarded): on a network, bytes are cheaper than a request's round trip.
  std::uint64_t coalesce_gap = std::uint64_t{1} << 20;
  /// A read larger than this is split into requests that run in parallel.
  std::uint64_t max_request_bytes = std::uint64_t{16} << 20;
  /// Multipart upload part size (at least kMinPartBytes, S3's minimum for all but the last).
  std::uint64_t part_bytes = std::uint64_t{16} << 20;
};
inline constexpr std::uint64_t kMinPartBytes = std::uint64_t{5} << 20;

/// Options from the environment: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION or
/// AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
/// DCPP_S3_ADDRESSING (path | virtual), DCPP_S3_MAX_REQUESTS, DCPP_S3_PART_BYTES. Throws
/// invalid_argument for a malformed value, naming the variable.
Options options_from_environment();

// ---- AWS Signature Version 4 (sigv4.cpp) ----------------------------------------------------

/// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104).
std::array<std::uint8_t, 32> sha256(std::span<const std::byte> data);
std::array<std::uint8_t, 32> hmac_sha256(std::span<const std::byte> key, std::span<const std::byte> data);
std::string hex(std::span<const std::uint8_t> bytes);
/// hex(sha256(data)): a payload's x-amz-content-sha256.
std::string sha256_hex(std::span<const std::byte> data);
/// hex(sha256("")), and the payload hash of requests whose body is not hashed.
inline constexpr std::string_view kEmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, every other byte
/// is %XX (upper case); '/' stays when `keep_slash` (an object key in a path).
std::string uri_encode(std::string_view text, bool keep_slash);

/// A request as SigV4 sees it: the raw (unencoded) path and query, and the headers to sign,
/// `host` and `x-amz-date` among them.
struct SigningRequest {
  std::string method;
  std::string path;                                        ///< "/bucket/key", not encoded
  std::vector<std::pair<std::string, std::string>> query;  ///< not encoded
  std::vector<std::pair<std::string, std::string>> headers;
};
/// SigV4's canonical request: path encoded once (as S3 wants), query sorted by encoded name,
/// header names lower-cased and sorted, values trimmed with inner runs of spaces collapsed,
/// repeated names joined with ','.
std::string canonical_request(const SigningRequest& request, std::string_view payload_hash);
/// The `Authorization` header value for `request` at `amz_date` ("20150830T123600Z"),
/// signing every header it holds.
std::string authorization(const SigningRequest& request, std::string_view payload_hash, const Credentials& credentials,
                          std::string_view region, std::string_view service, std::string_view amz_date);
/// "YYYYMMDDTHHMMSSZ" of `time` (UTC).
std::string amz_date(std::chrono::system_clock::time_point time);

// ---- the storage protocols ------------------------------------------------------------------

/// What the object-store client did, for reports and benchmarks.
struct Stats {
  std::uint64_t requests = 0;        ///< HTTP requests sent (retries included)
  std::uint64_t retries = 0;         ///< of those, repeats of a failed one
  std::uint64_t bytes_received = 0;  ///< response body bytes (discarded gap bytes included)
  std::uint64_t bytes_sent = 0;      ///< request body bytes
};

class Client;

class ObjectStoreReader : public storage::StorageReader {
 public:
  ObjectStoreReader(Location location, Options options, storage::ReadOptions read = {});
  ~ObjectStoreReader() override;
  metadata::ValidatedMetadata read_metadata() const override;
  /// One GET of `.metadata` (at most storage::kMaxMetadataBytes).
  std::vector<std::byte> read_metadata_bytes() const override;
  /// Decoded and validated, every storage entry checked against its data object's size
  /// (listed once, with the ETags every later read must match).
  metadata::ValidatedMetadata metadata_from_bytes(std::span<const std::byte> bytes) const override;
  void set_up_storage_reader(metadata::ValidatedMetadata metadata, bool is_coordinator) override;
  storage::ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) override;
  bool can_share_items() const override { return true; }
  void read_item(const metadata::MetadataIndex& item, std::span<std::byte> out, storage::ReadReport& report) override;
  storage::ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner,
                                const storage::SharedItems& shared) override;
  std::string location_of(std::string_view relative_path) const override;

  const Location& location() const noexcept { return location_; }
  /// Requests and bytes so far (every read of this reader).
  Stats stats() const;

 private:
  struct ObjectInfo {
    std::uint64_t size = 0;
    std::string etag;
  };
  /// The data objects' sizes and ETags, found once (listing, then HEAD for what a listing of
  /// the prefix does not show).
  const std::map<std::string, ObjectInfo, std::less<>>& objects(const metadata::Metadata& md) const;
  const ObjectInfo& object(std::string_view relative_path) const;
  Location location_;
  storage::ReadOptions read_;
  std::shared_ptr<Client> client_;
  mutable std::mutex objects_mutex_;
  mutable std::optional<std::map<std::string, ObjectInfo, std::less<>>> objects_;
  std::optional<metadata::ValidatedMetadata> metadata_;
};

class ObjectStoreWriter : public storage::StorageWriter {
 public:
  ObjectStoreWriter(Location location, Options options, storage::WriteOptions write = {});
  ~ObjectStoreWriter() override;
  ObjectStoreWriter(const ObjectStoreWriter&) = delete;
  ObjectStoreWriter& operator=(const ObjectStoreWriter&) = delete;

  void reset(std::optional<std::filesystem::path> checkpoint_id = std::nullopt) override;
  /// Coordinator: a `.metadata` already there is replaced only with WriteOptions::overwrite
  /// (failed_precondition otherwise); its ETag is kept for the conditional publish.
  void set_up_storage_writer(bool is_coordinator, int rank, int world_size) override;
  /// With format torch_1_13: refuses dtypes torch 1.13 lacks, as FileSystemWriter does.
  planning::SavePlan prepare_local_plan(planning::SavePlan plan) override;
  /// Coordinator: plan i writes `__{i}_{save id}.distcp`.
  std::vector<planning::SavePlan> prepare_global_plan(std::vector<planning::SavePlan> plans) override;
  std::vector<planning::WriteResult> write_data(const planning::SavePlan& plan, planning::SavePlanner& planner) override;
  /// Checks every data object as a reader will (listed sizes), then publishes `.metadata`
  /// with one conditional PUT.
  metadata::Metadata finish(metadata::Metadata metadata,
                            const std::vector<std::vector<planning::WriteResult>>& results) override;
  void abort() noexcept override;
  bool published() const noexcept override { return published_; }

  const Location& location() const noexcept { return location_; }
  Stats stats() const;

 private:
  Location location_;
  storage::WriteOptions write_;
  std::shared_ptr<Client> client_;
  std::string save_id_;
  bool is_coordinator_ = true;
  int rank_ = 0;
  std::optional<std::string> replaces_etag_;  // the `.metadata` an overwrite replaces
  std::vector<std::byte> publishing_;         // the `.metadata` finish() began to PUT
  std::mutex created_mutex_;
  std::vector<std::string> created_;          // data object keys this rank completed
  std::vector<std::pair<std::string, std::string>> uploads_;  // (key, upload id) not completed
  bool planned_ = false;
  bool published_ = false;
};

}  // namespace dcp::s3

namespace dcp::s3 {
// Not exported: shared by the implementation units.

/// Where a response body goes, piece by piece: `data` null discards `size` bytes (a gap
/// between coalesced ranges).
struct Segment {
  std::byte* data = nullptr;
  std::uint64_t size = 0;
};

struct ObjectHead {
  std::uint64_t size = 0;
  std::string etag;
};

/// One HTTP request, before signing.
struct Request {
  std::string method;
  std::string bucket;
  std::string key;                                          ///< "" for the bucket itself
  std::vector<std::pair<std::string, std::string>> query;   ///< not encoded
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const std::byte> body;
};

/// A response: status, headers (names lower case), and the body when it was not streamed into
/// segments (at most kMaxResponseBytes; S3 answers with small XML documents).
struct Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string header(std::string_view name) const;
};
inline constexpr std::uint64_t kMaxResponseBytes = std::uint64_t{64} << 20;

class ConnectionPool;

/// S3 over HTTP/1.1: signing, a keep-alive connection pool, retries. Thread-safe; every
/// method may run on several threads at once (at most Options::max_requests connections).
class Client {
 public:
  explicit Client(Options options);
  ~Client();
  const Options& options() const noexcept { return options_; }
  Stats stats() const;

  /// The whole object, at most `max_bytes` (out_of_range past it); nullopt when it does not
  /// exist. `etag` receives its ETag.
  std::optional<std::vector<std::byte>> get_object(const std::string& bucket, const std::string& key,
                                                   std::uint64_t max_bytes, std::string* etag = nullptr);
  /// Reads the bytes [offset, offset + total size of `segments`) of an object whose ETag must
  /// still be `etag`, into the segments in order. A failed try resumes at the byte reached.
  void get_range(const std::string& bucket, const std::string& key, const std::string& etag, std::uint64_t offset,
                 std::span<const Segment> segments);
  std::optional<ObjectHead> head(const std::string& bucket, const std::string& key);
  /// Objects whose key starts with `prefix`; with `delimiter`, those directly below it only.
  /// At most `max_keys` (resource_exhausted past it).
  std::vector<std::pair<std::string, ObjectHead>> list(const std::string& bucket, const std::string& prefix,
                                                       bool delimiter, std::uint64_t max_keys);
  /// PUT with extra headers (conditions, checksum); returns the new ETag. A failed condition
  /// (412) throws failed_precondition.
  std::string put(const std::string& bucket, const std::string& key, std::span<const std::byte> body,
                  std::vector<std::pair<std::string, std::string>> headers = {});
  std::string create_upload(const std::string& bucket, const std::string& key);
  /// Uploads part `number` with its CRC-32, which the store checks; returns the part's ETag.
  std::string upload_part(const std::string& bucket, const std::string& key, const std::string& upload_id, int number,
                          std::span<const std::byte> body);
  void complete_upload(const std::string& bucket, const std::string& key, const std::string& upload_id,
                       const std::vector<std::string>& part_etags);
  void abort_upload(const std::string& bucket, const std::string& key, const std::string& upload_id);
  void remove(const std::string& bucket, const std::string& key);

  /// `s3://bucket/key`.
  static std::string url(const std::string& bucket, const std::string& key);

 private:
  /// Signs and sends `request` once; `segments` (2xx only) receive the body, `received` the
  /// count of their bytes that arrived. Transport failures come back as status 0.
  Response attempt(const Request& request, std::span<const Segment> segments, std::uint64_t& received,
                   std::string& failure);
  /// attempt() with retries for everything but ranged reads; throws for a non-2xx status
  /// other than those in `accept`.
  Response send(const Request& request, std::initializer_list<int> accept = {});
  void backoff(int attempt) const;

  Options options_;
  std::unique_ptr<ConnectionPool> pool_;
  std::atomic<std::uint64_t> requests_{0}, retries_{0}, received_{0}, sent_{0};
};

/// The error for a response that failed: its status, the store's error code and message, the
/// object's URL; not_found for 404, permission_denied for 403, failed_precondition for 412.
Error response_error(const Response& response, std::string_view url, std::string_view what);
/// The text of every <tag>...</tag> in an XML document, unescaped (S3's responses are flat
/// enough for this); with `within`, only inside <within> elements, one vector per element.
std::vector<std::string> xml_values(std::string_view xml, std::string_view tag);
std::vector<std::string_view> xml_elements(std::string_view xml, std::string_view tag);

}  // namespace dcp::s3
