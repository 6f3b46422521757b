// TensorSource and the float64 view of elements (tensor_source.hpp).
#include "tensor_source.hpp"

#include <algorithm>
#include <exception>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <variant>

import dcp.error;
import dcp.dtype;
import dcp.memory;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.checkpoint;

namespace dcpp_cli {
namespace {

namespace md = dcp::metadata;
namespace planning = dcp::planning;

bool is_torch_save(const std::filesystem::path& path) {
  const auto ext = path.extension();
  return (ext == ".pt" || ext == ".pth") && !std::filesystem::is_directory(path);
}

}  // namespace

TensorSource::TensorSource(const std::filesystem::path& path, const dcp::checkpoint::LoadOptions& options)
    : path_(path), options_(options) {
  if (is_torch_save(path)) {
    imported_ = std::make_unique<dcp::checkpoint::ImportedStateDict>(dcp::checkpoint::import_torch_save(path));
    for (const auto& entry : imported_->state_dict.entries()) {
      SourceEntry e;
      e.key = entry.fqn;
      if (const auto* t = std::get_if<planning::SaveTensor>(&entry.value)) {
        e.tensor = true;
        e.dtype = t->properties.dtype;
        e.shape = t->global_size;
        e.bytes = md::byte_size(e.shape, e.dtype);
      }
      entries_.push_back(std::move(e));
    }
  } else {
    metadata_ = dcp::checkpoint::inspect(path);
    for (const auto& item : (*metadata_)->items) {
      SourceEntry e;
      e.key = item.fqn;
      if (item.is_tensor()) {
        e.tensor = true;
        e.dtype = item.tensor().properties.dtype;
        e.shape = item.tensor().size;
        e.bytes = md::byte_size(e.shape, e.dtype);
      }
      entries_.push_back(std::move(e));
    }
  }
  for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].key, i);
}

TensorSource::~TensorSource() = default;

const SourceEntry* TensorSource::find(std::string_view key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void TensorSource::read(const std::vector<std::string>& keys,
                        const std::function<void(const std::string&, dcp::checkpoint::TensorBuffer)>& consume) const {
  if (keys.empty()) return;
  if (metadata_) {
    auto options = options_;
    auto wanted = std::make_shared<std::set<std::string, std::less<>>>(keys.begin(), keys.end());
    options.select = [wanted](std::string_view fqn) { return wanted->contains(fqn); };
    options.batch_bytes = UINT64_MAX;  // the caller batches
    (void)dcp::checkpoint::for_each_tensor(path_, *metadata_, options, consume);
    return;
  }
  // A torch.save file: a dense view is handed out in place (the mapping outlives the call),
  // any other view copied row-major.
  for (const auto& key : keys) {
    const auto& tensor = std::get<planning::SaveTensor>(imported_->state_dict.find(key)->value);
    const SourceEntry& entry = *find(key);
    dcp::checkpoint::TensorBuffer out;
    out.dtype = entry.dtype;
    out.shape = entry.shape;
    const planning::TensorSlice& from = tensor.chunks.at(0).memory;
    if (planning::is_contiguous(from)) {
      out.memory = dcp::memory::Buffer(from.data, entry.bytes, nullptr, nullptr);
    } else {
      out.memory = dcp::memory::allocate(entry.bytes);
      const dcp::storage::SliceCopy copy{.to = out.slice(), .from = from};
      dcp::storage::copy_slices(std::span(&copy, 1), options_.read.threads);
    }
    consume(key, std::move(out));
  }
  imported_->source->check_unchanged();
}

dcp::Result<std::string> TensorSource::object_json(const std::string& key) const {
  if (!objects_) {
    objects_.emplace();
    if (metadata_) {
      for (auto& [fqn, document] : dcp::checkpoint::load_objects(path_, *metadata_, options_))
        objects_->emplace(fqn, dcp::capture([&] { return dcp::record::object_to_json(document, document.root()); }));
    } else {
      for (const auto& entry : imported_->state_dict.entries())
        if (const auto* value = std::get_if<planning::ObjectValue>(&entry.value))
          objects_->emplace(entry.fqn,
                            dcp::capture([&] { return dcp::record::object_to_json(*value->document, value->id); }));
    }
  }
  const auto it = objects_->find(key);
  if (it == objects_->end()) return dcp::Error(dcp::Errc::not_found, "no object '" + dcp::escape_text(key) + "'");
  return it->second;
}

std::vector<std::vector<std::string>> batches_of(const TensorSource& source, const std::vector<std::string>& keys,
                                                 std::uint64_t batch_bytes) {
  std::vector<std::vector<std::string>> batches;
  std::uint64_t bytes = 0;
  for (const auto& key : keys) {
    const std::uint64_t size = source.find(key)->bytes;
    if (batches.empty() || (bytes + size > batch_bytes && bytes > 0)) {
      batches.emplace_back();
      bytes = 0;
    }
    batches.back().push_back(key);
    bytes += size;
  }
  return batches;
}

bool has_float64_values(dcp::DType dtype) noexcept { return dcp::storage::can_convert(dtype, dcp::DType::float64); }

void to_float64(std::span<const std::byte> bytes, dcp::DType dtype, std::uint64_t first, std::span<double> out) {
  const std::uint64_t itemsize = dcp::dtype_itemsize(dtype);
  const md::Shape lengths{static_cast<std::int64_t>(out.size())};
  dcp::storage::copy_box(reinterpret_cast<std::byte*>(out.data()), {1}, dcp::DType::float64,
                         bytes.data() + first * itemsize, {1}, dtype, lengths);
}

void parallel_for(std::size_t count, int threads, const std::function<void(std::size_t)>& task) {
  const std::size_t n = std::min<std::size_t>(
      count, threads > 0 ? threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  if (n <= 1) {
    for (std::size_t i = 0; i < count; ++i) task(i);
    return;
  }
  std::mutex mutex;
  std::size_t next = 0;
  std::exception_ptr failure;
  auto work = [&] {
    for (;;) {
      std::size_t i;
      {
        std::lock_guard lock(mutex);
        if (failure || next == count) return;
        i = next++;
      }
      try {
        task(i);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!failure) failure = std::current_exception();
      }
    }
  };
  std::vector<std::jthread> pool;
  for (std::size_t t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  pool.clear();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace dcpp_cli
