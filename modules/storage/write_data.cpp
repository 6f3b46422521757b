// FileSystemWriter::write_data: one rank's items into its `__{rank}_{n}.distcp` files, each item
// a torch.save archive, the files written in parallel on an Asio thread pool.
module;
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.record;

namespace dcp::storage {
namespace fs = std::filesystem;

namespace {

using record::StorageSink;

// torch's _item_size: bytes of a tensor item's whole tensor (global size); objects count 1.
std::uint64_t item_size(const planning::WriteItem& item) { return item.tensor_storage_size().value_or(1); }

// torch's _split_by_size_and_type: objects round-robin, then tensors from the largest, each to
// the file with the fewest bytes so far. Empty files are dropped.
std::vector<std::vector<const planning::WriteItem*>> split_by_size_and_type(std::size_t bins,
                                                                           const std::vector<planning::WriteItem>& items) {
  std::vector<std::vector<const planning::WriteItem*>> buckets(std::max<std::size_t>(bins, 1));
  std::vector<std::uint64_t> sizes(buckets.size(), 0);
  std::vector<const planning::WriteItem*> tensors;
  std::size_t objects = 0;
  for (const auto& item : items) {
    if (item.type == planning::WriteItemType::byte_io) buckets[objects++ % buckets.size()].push_back(&item);
    else tensors.push_back(&item);
  }
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const auto* a, const auto* b) { return item_size(*a) > item_size(*b); });
  for (const auto* item : tensors) {
    const auto smallest = static_cast<std::size_t>(std::min_element(sizes.begin(), sizes.end()) - sizes.begin());
    buckets[smallest].push_back(item);
    sizes[smallest] += item_size(*item);
  }
  std::erase_if(buckets, [](const auto& b) { return b.empty(); });
  return buckets;
}

// Passes a tensor chunk's elements to `sink` in row-major order: dense memory as is, strided
// memory through a bounce buffer of at most `bounce_bytes`, split along the leading dims.
void stream_elements(const planning::TensorSlice& slice, std::uint64_t bounce_bytes, std::vector<std::byte>& bounce,
                     const StorageSink& sink, const std::function<void(std::span<const std::byte>)>& written) {
  const auto bytes = metadata::byte_size(slice.sizes, slice.dtype);
  if (bytes == 0) return;
  if (planning::is_contiguous(slice)) {
    for (std::uint64_t done = 0; done < bytes;) {
      const auto piece = std::min<std::uint64_t>(bytes - done, kWritePieceBytes);
      const std::span<const std::byte> source(slice.data + done, static_cast<std::size_t>(piece));
      sink(source);
      if (written) written(source);
      done += piece;
    }
    return;
  }
  if (bytes <= bounce_bytes || slice.sizes.empty()) {
    bounce.resize(static_cast<std::size_t>(bytes));
    copy_box(bounce.data(), layout::contiguous_strides(slice.sizes), slice.dtype, slice.data, slice.strides, slice.dtype,
             slice.sizes);
    sink(std::span<const std::byte>(bounce.data(), static_cast<std::size_t>(bytes)));
    return;
  }
  // Split the first dim longer than 1 into pieces that fit the buffer (at least one index).
  std::size_t dim = 0;
  while (slice.sizes[dim] == 1) ++dim;
  const auto per_index = bytes / static_cast<std::uint64_t>(slice.sizes[dim]);
  const auto step = std::max<std::int64_t>(1, static_cast<std::int64_t>(bounce_bytes / std::max<std::uint64_t>(per_index, 1)));
  metadata::Shape offsets(slice.sizes.size(), 0);
  for (std::int64_t start = 0; start < slice.sizes[dim]; start += step) {
    auto lengths = slice.sizes;
    offsets[dim] = start;
    lengths[dim] = std::min(step, slice.sizes[dim] - start);
    stream_elements(planning::narrow(slice, offsets, lengths), bounce_bytes, bounce, sink, written);
  }
}

struct FileJob {
  std::string name;  // relative to the checkpoint
  std::vector<const planning::WriteItem*> items;
  std::vector<planning::WriteResult> results;
  std::optional<Error> error;
};

}  // namespace

std::vector<planning::WriteResult> FileSystemWriter::write_data(const planning::SavePlan& plan,
                                                               planning::SavePlanner& planner) {
  const auto& prefix = plan.storage_data;
  if (!is_data_file_prefix(prefix))
    throw Error(Errc::invalid_argument, "save plan without the filesystem writer's storage data").in_file(dir_.string());
  open_directory();

  const int files = options_.files_per_rank > 0 ? options_.files_per_rank : default_threads();
  std::vector<FileJob> jobs;
  auto add_job = [&](std::vector<const planning::WriteItem*> items) {
    jobs.push_back(FileJob{prefix + std::to_string(jobs.size()) + ".distcp", std::move(items), {}, std::nullopt});
  };
  if (options_.single_file_per_rank) {
    for (auto& bucket : split_by_size_and_type(static_cast<std::size_t>(files), plan.items)) {
      // Objects first, as torch writes them.
      std::stable_partition(bucket.begin(), bucket.end(),
                            [](const auto* i) { return i->type == planning::WriteItemType::byte_io; });
      add_job(std::move(bucket));
    }
  } else {
    for (const auto& item : plan.items) add_job({&item});
  }

  const auto style = options_.format == metadata::Flavor::torch_1_13 ? record::ArchiveStyle::torch_1_13
                                                                      : record::ArchiveStyle::torch_2x;
  std::mutex progress_mutex;
  auto write_file = [&](FileJob& job) {
    // Durable saves send large records to the disk directly: no page-cache copy, and nothing
    // left for the fsync to write back.
    OutputFile file(dir_fd_, job.name, dir_ / job.name, options_.sync_files ? WritePath::direct : WritePath::buffered);
    {
      std::lock_guard lock(created_mutex_);
      created_.push_back(job.name);
    }
    std::vector<std::byte> bounce;
    for (const auto* item : job.items) {
      const auto offset = file.position();
      bool value_error = false;  // the value cannot be saved: its own error, not this file's
      try {
        auto data = planner.resolve_data(*item);
        std::uint64_t tensor_bytes = 0;
        if (const auto* object = std::get_if<planning::ObjectValue>(&data)) {
          try {
            // Every error it raises comes before its first byte is written.
            (void)record::write_object_archive([&](std::span<const std::byte> bytes) { file.write(bytes); }, style,
                                               *object->document, object->id, object->storages);
          } catch (Error& e) {
            value_error = true;  // at its byte in the file it was decoded from, which the caller names
            if (const auto at = object->document->at(object->id).offset()) e.at_offset(*at);
            throw;
          }
        } else {
          const auto& slice = std::get<planning::TensorSlice>(data);
          if (!item->tensor_data || slice.dtype != item->tensor_data->properties.dtype ||
              slice.sizes != item->tensor_data->chunk.sizes)
            throw Error(Errc::invalid_argument, "resolve_data gave memory of another shape or dtype than the item's chunk");
          tensor_bytes = metadata::byte_size(slice.sizes, slice.dtype);
          (void)record::write_tensor_archive(
              [&](std::span<const std::byte> bytes) { file.write(bytes); }, style, slice.dtype, slice.sizes,
              [&](const StorageSink& sink) { stream_elements(slice, options_.bounce_bytes, bounce, sink, options_.written); }, offset);
        }
        const auto length = file.position() - offset;
        job.results.push_back(planning::WriteResult{item->index, length, metadata::StorageInfo{job.name, offset, length, {}, 0}});
        if (options_.progress) {
          std::lock_guard lock(progress_mutex);
          options_.progress(tensor_bytes);
        }
      } catch (Error& e) {
        e.for_key(item->index.fqn);
        if (!value_error) {
          e.in_file((dir_ / job.name).string());
          e.at_offset(offset);
        }
        throw;
      }
    }
    file.close(options_.sync_files);
  };

  if (jobs.size() == 1) {
    write_file(jobs[0]);
  } else if (!jobs.empty()) {
    run_on_pool(std::min(static_cast<int>(jobs.size()), files), jobs.size(), [&](std::size_t i) { write_file(jobs[i]); },
                [&](std::size_t i, Error e) { jobs[i].error = std::move(e); });
    for (auto& job : jobs)
      if (job.error) throw *job.error;
  }
  // The files' entries are durable before the coordinator can publish a .metadata naming them.
  if (options_.sync_files && !jobs.empty() && ::fsync(dir_fd_) != 0) throw os_error(dir_, "cannot sync directory", errno);
  std::vector<planning::WriteResult> results;
  for (auto& job : jobs)
    for (auto& r : job.results) results.push_back(std::move(r));
  wrote_ = true;
  return results;
}

}  // namespace dcp::storage
