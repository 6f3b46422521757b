// ObjectStoreWriter: each rank's items streamed into one data object (a single PUT when small,
// else a multipart upload whose parts go up on their own threads while the next part fills),
// and `.metadata` published last by the coordinator with one conditional PUT.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>
module dcp.s3;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;

namespace dcp::s3 {
namespace {

std::string new_save_id() {
  std::random_device device;
  std::string id;
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) id += kDigits[device() & 15];
  return id;
}

// The parts of one data object, uploaded while the next part fills: at most `in_flight` parts
// are held in memory and on the wire at once. A part's failure is kept (no exception leaves
// its thread) and thrown by the next add() or by finish().
class ObjectUpload {
 public:
  ObjectUpload(Client& client, const Location& location, std::string name, std::uint64_t part_bytes, int in_flight,
               std::function<void(std::string)> on_upload)
      : client_(client),
        bucket_(location.bucket),
        key_(location.key(name)),
        url_(location.url(name)),
        part_bytes_(part_bytes),
        in_flight_(std::max(in_flight, 1)),
        on_upload_(std::move(on_upload)) {}
  ObjectUpload(const ObjectUpload&) = delete;
  ObjectUpload& operator=(const ObjectUpload&) = delete;
  ~ObjectUpload() { join_all(); }

  std::uint64_t position() const noexcept { return position_; }

  void write(std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
      if (part_.capacity() < part_bytes_) part_.reserve(static_cast<std::size_t>(part_bytes_));
      const auto take = std::min<std::size_t>(bytes.size(), static_cast<std::size_t>(part_bytes_ - part_.size()));
      part_.insert(part_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(take));
      bytes = bytes.subspan(take);
      position_ += take;
      if (part_.size() == part_bytes_) send_part();
    }
  }

  /// Completes the object: one PUT if it never filled a part, else the last part and the
  /// completion. Returns its size.
  std::uint64_t finish() {
    if (upload_id_.empty()) {
      (void)client_.put(bucket_, key_, part_);
      part_.clear();
      return position_;
    }
    if (!part_.empty() || etags_.empty()) send_part();
    join_all();
    rethrow();
    client_.complete_upload(bucket_, key_, upload_id_, etags_);
    return position_;
  }

  /// The upload id of an upload begun and not completed ("" if none).
  const std::string& upload_id() const noexcept { return upload_id_; }

 private:
  struct Part {
    std::thread thread;
  };
  void send_part() {
    rethrow();
    if (upload_id_.empty()) {
      upload_id_ = client_.create_upload(bucket_, key_);
      on_upload_(upload_id_);
    }
    while (static_cast<int>(threads_.size()) >= in_flight_) {
      threads_.front().join();
      threads_.erase(threads_.begin());
      rethrow();
    }
    const int number = static_cast<int>(etags_.size()) + 1;
    etags_.emplace_back();
    auto body = std::make_shared<std::vector<std::byte>>(std::move(part_));
    part_ = {};
    threads_.emplace_back([this, number, body] {
      try {
        auto etag = client_.upload_part(bucket_, key_, upload_id_, number, *body);
        std::lock_guard lock(mutex_);
        etags_[static_cast<std::size_t>(number - 1)] = std::move(etag);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    });
  }
  void join_all() noexcept {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }
  void rethrow() {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
  }

  Client& client_;
  std::string bucket_, key_, url_;
  std::uint64_t part_bytes_;
  int in_flight_;
  std::function<void(std::string)> on_upload_;
  std::vector<std::byte> part_;
  std::uint64_t position_ = 0;
  std::string upload_id_;
  std::vector<std::string> etags_;  // guarded by mutex_ while parts are in flight
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::exception_ptr error_;
};

// A tensor chunk's elements in row-major order: dense memory as is, strided memory through a
// bounce buffer of at most `bounce_bytes`, one leading index range at a time.
void stream_elements(const planning::TensorSlice& slice, std::uint64_t bounce_bytes, std::vector<std::byte>& bounce,
                     const record::StorageSink& sink) {
  const auto bytes = metadata::byte_size(slice.sizes, slice.dtype);
  if (bytes == 0) return;
  if (planning::is_contiguous(slice)) {
    sink({slice.data, static_cast<std::size_t>(bytes)});
    return;
  }
  const auto itemsize = dtype_itemsize(slice.dtype);
  const auto contiguous = layout::contiguous_strides(slice.sizes);
  for (const auto& box : layout::bounded_boxes(slice.sizes, contiguous, std::max<std::uint64_t>(bounce_bytes / itemsize, 1))) {
    const auto part = planning::narrow(slice, box.offsets, box.sizes);
    const auto part_bytes = metadata::byte_size(box.sizes, slice.dtype);
    bounce.resize(static_cast<std::size_t>(part_bytes));
    storage::copy_box(bounce.data(), layout::contiguous_strides(box.sizes), slice.dtype, part.data, part.strides,
                      slice.dtype, box.sizes);
    sink(std::span<const std::byte>(bounce.data(), static_cast<std::size_t>(part_bytes)));
  }
}

}  // namespace

ObjectStoreWriter::ObjectStoreWriter(Location location, Options options, storage::WriteOptions write)
    : location_(std::move(location)),
      write_(std::move(write)),
      client_(std::make_shared<Client>(std::move(options))),
      save_id_(new_save_id()) {}

ObjectStoreWriter::~ObjectStoreWriter() = default;

Stats ObjectStoreWriter::stats() const { return client_->stats(); }

void ObjectStoreWriter::reset(std::optional<std::filesystem::path> checkpoint_id) {
  if (checkpoint_id) location_ = parse_url(checkpoint_id->native());
  save_id_ = new_save_id();
  replaces_etag_.reset();
  publishing_.clear();
  created_.clear();
  uploads_.clear();
  planned_ = published_ = false;
}

void ObjectStoreWriter::set_up_storage_writer(bool is_coordinator, int rank, int) {
  is_coordinator_ = is_coordinator;
  rank_ = rank;
  if (!is_coordinator) return;
  const auto head = client_->head(location_.bucket, location_.key(".metadata"));
  if (head && !write_.overwrite)
    throw Error(Errc::failed_precondition, "a checkpoint is already there (overwrite replaces it)")
        .in_file(location_.url(".metadata"));
  if (head) replaces_etag_ = head->etag;
}

planning::SavePlan ObjectStoreWriter::prepare_local_plan(planning::SavePlan plan) {
  if (write_.format == metadata::Flavor::torch_1_13)
    throw Error(Errc::unimplemented, "saves to an object store write torch 2.x checkpoints (--format torch2)")
        .in_file(location_.url());
  return plan;
}

std::vector<planning::SavePlan> ObjectStoreWriter::prepare_global_plan(std::vector<planning::SavePlan> plans) {
  for (std::size_t i = 0; i < plans.size(); ++i) plans[i].storage_data = "__" + std::to_string(i) + "_" + save_id_;
  planned_ = true;
  return plans;
}

std::vector<planning::WriteResult> ObjectStoreWriter::write_data(const planning::SavePlan& plan,
                                                                 planning::SavePlanner& planner) {
  if (!plan.storage_data.starts_with("__") || plan.storage_data.find('/') != std::string::npos)
    throw Error(Errc::invalid_argument, "save plan without the object-store writer's storage data").in_file(location_.url());
  std::vector<planning::WriteResult> results;
  if (plan.items.empty()) return results;
  const std::string name = plan.storage_data + ".distcp";
  const auto& options = client_->options();
  // S3 completes at most 10,000 parts: parts grow with what the plan will write (whole
  // tensors' bytes bound each item's archive from above, save for its few KiB of headers).
  std::uint64_t planned = 0;
  for (const auto& item : plan.items) planned += item.tensor_storage_size().value_or(0) + (std::uint64_t{64} << 10);
  const auto part_bytes = std::max({options.part_bytes, kMinPartBytes, planned / 9'000 + 1});
  ObjectUpload upload(*client_, location_, name, part_bytes, std::max(options.max_requests / 2, 2),
                      [&](std::string id) {
                        std::lock_guard lock(created_mutex_);
                        uploads_.emplace_back(location_.key(name), std::move(id));
                      });
  // Objects first, as torch writes them.
  std::vector<const planning::WriteItem*> items;
  for (const auto& item : plan.items) items.push_back(&item);
  std::stable_partition(items.begin(), items.end(), [](const auto* i) { return i->type == planning::WriteItemType::byte_io; });
  std::vector<std::byte> bounce;
  auto sink = [&](std::span<const std::byte> bytes) { upload.write(bytes); };
  for (const auto* item : items) {
    const auto offset = upload.position();
    try {
      auto data = planner.resolve_data(*item);
      if (const auto* object = std::get_if<planning::ObjectValue>(&data)) {
        (void)record::write_object_archive(sink, record::ArchiveStyle::torch_2x, *object->document, object->id,
                                           object->storages);
      } else {
        const auto& slice = std::get<planning::TensorSlice>(data);
        if (!item->tensor_data || slice.dtype != item->tensor_data->properties.dtype ||
            slice.sizes != item->tensor_data->chunk.sizes)
          throw Error(Errc::invalid_argument, "resolve_data gave memory of another shape or dtype than the item's chunk");
        (void)record::write_tensor_archive(
            sink, record::ArchiveStyle::torch_2x, slice.dtype, slice.sizes,
            [&](const record::StorageSink& s) { stream_elements(slice, write_.bounce_bytes, bounce, s); }, offset);
        if (write_.progress) write_.progress(metadata::byte_size(slice.sizes, slice.dtype));
      }
    } catch (Error& e) {
      e.for_key(item->index.fqn);
      e.in_file(location_.url(name));
      e.at_offset(offset);
      throw;
    }
    const auto length = upload.position() - offset;
    results.push_back(planning::WriteResult{item->index, length, metadata::StorageInfo{name, offset, length, {}, 0}});
  }
  try {
    (void)upload.finish();
  } catch (Error& e) {
    e.in_file(location_.url(name));
    throw;
  }
  std::lock_guard lock(created_mutex_);
  std::erase_if(uploads_, [&](const auto& u) { return u.first == location_.key(name); });
  created_.push_back(location_.key(name));
  return results;
}

metadata::Metadata ObjectStoreWriter::finish(metadata::Metadata md,
                                             const std::vector<std::vector<planning::WriteResult>>& results) {
  if (!planned_) throw Error(Errc::failed_precondition, "finish without prepare_global_plan").in_file(location_.url());
  md.flavor = metadata::Flavor::torch_2x;
  md.storage_data.clear();
  for (const auto& rank_results : results)
    for (const auto& r : rank_results) md.storage_data.emplace_back(r.index, r.storage_data);
  md.version = "1.0.0";  // torch 2.13's CURRENT_DCP_VERSION
  md.storage_meta = metadata::StorageMeta{location_.url(), save_id_, std::nullopt, {}};
  md.reindex();
  // What is about to be published is checked as a reader will, against the objects as the
  // store lists them now (every rank completed its own).
  std::map<std::string, std::uint64_t, std::less<>> sizes;
  for (const auto& [key, head] :
       client_->list(location_.bucket, location_.prefix.empty() ? "" : location_.prefix + "/", true, 1'000'000)) {
    const auto name = location_.prefix.empty() ? key : key.substr(location_.prefix.size() + 1);
    sizes.emplace(name, head.size);
  }
  try {
    const auto validated = metadata::validate(md);
    metadata::check_storage_bounds(validated, [&](std::string_view name) -> std::optional<std::uint64_t> {
      const auto it = sizes.find(name);
      if (it == sizes.end()) return std::nullopt;
      return it->second;
    });
  } catch (Error& e) {
    throw Error(Errc::internal, "the checkpoint written fails its own checks: " + std::string(e.what()))
        .in_file(location_.url());
  }
  if (write_.before_publish) write_.before_publish();
  const auto bytes = metadata::encode_metadata(md, md.flavor);
  // The commit: `.metadata` appears (or is replaced) only as the save checked it would be.
  std::vector<std::pair<std::string, std::string>> condition;
  if (replaces_etag_) condition.emplace_back("if-match", *replaces_etag_);
  else condition.emplace_back("if-none-match", "*");
  publishing_ = bytes;
  try {
    (void)client_->put(location_.bucket, location_.key(".metadata"), bytes, std::move(condition));
  } catch (Error& e) {
    if (e.code() != Errc::failed_precondition) throw;
    // A retried PUT whose first try landed (its answer lost) fails its own condition: the
    // checkpoint is published when `.metadata` holds exactly these bytes (they name this save).
    const auto there = client_->get_object(location_.bucket, location_.key(".metadata"), storage::kMaxMetadataBytes);
    if (!there || *there != bytes)
      throw Error(Errc::failed_precondition, "another save published a checkpoint here meanwhile")
          .in_file(location_.url(".metadata"));
  }
  published_ = true;
  return md;
}

void ObjectStoreWriter::abort() noexcept {
  if (published_) return;
  if (!publishing_.empty()) {
    // The publishing PUT failed as far as this process knows, yet one of its tries may have
    // landed: the data stays unless `.metadata` provably is not this save's.
    try {
      const auto there = client_->get_object(location_.bucket, location_.key(".metadata"), storage::kMaxMetadataBytes);
      if (there && *there == publishing_) {
        published_ = true;
        return;
      }
    } catch (...) {
      return;
    }
  }
  std::vector<std::pair<std::string, std::string>> uploads;
  std::vector<std::string> created;
  {
    std::lock_guard lock(created_mutex_);
    uploads.swap(uploads_);
    created.swap(created_);
  }
  // Only what this save created: its uploads, and the data objects under its own save id.
  for (const auto& [key, id] : uploads) {
    try {
      client_->abort_upload(location_.bucket, key, id);
    } catch (...) {
    }
  }
  for (const auto& key : created) {
    try {
      client_->remove(location_.bucket, key);
    } catch (...) {
    }
  }
}

}  // namespace dcp::s3
