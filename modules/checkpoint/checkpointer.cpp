// torch's _Checkpointer, and the staging area behind async_save.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.collective;

namespace dcp::checkpoint {
namespace {

// The names of the staging buffers: a tensor's chunk, a storage of an object's tensor.
std::string chunk_buffer(const std::string& fqn, std::size_t chunk) { return fqn + '\n' + std::to_string(chunk); }
std::string storage_buffer(const std::string& fqn, const std::string& key) { return fqn + "\nstorage " + key; }

// visit(name, bytes, fqn) for each staging buffer stage() uses for `state_dict`.
template <typename Visit>
void for_each_buffer(const planning::StateDict& state_dict, Visit&& visit) {
  for (const auto& entry : state_dict.entries()) {
    if (const auto* tensor = std::get_if<planning::SaveTensor>(&entry.value)) {
      for (std::size_t c = 0; c < tensor->chunks.size(); ++c) {
        const auto& source = tensor->chunks[c].memory;
        visit(chunk_buffer(entry.fqn, c), metadata::byte_size(source.sizes, source.dtype), entry.fqn);
      }
    } else {
      for (const auto& [key, bytes] : std::get<planning::ObjectValue>(entry.value).storages)
        visit(storage_buffer(entry.fqn, key), std::uint64_t{bytes.size()}, entry.fqn);
    }
  }
}

}  // namespace

StagingArea::StagingArea(std::function<memory::Buffer(std::uint64_t)> allocate) : allocate_(std::move(allocate)) {}

std::uint64_t StagingArea::bytes() const noexcept {
  std::uint64_t total = 0;
  for (const auto& [key, buffer] : buffers_) total += buffer.size();
  return total;
}

// The staging buffer kept under `name` for `bytes` bytes, reallocated when the size changed.
memory::Buffer& StagingArea::buffer(const std::string& name, std::uint64_t bytes, std::string_view fqn) {
  auto& buffer = buffers_[name];
  if (buffer.size() != bytes || !buffer.data()) {
    buffer = memory::Buffer();  // free first: the peak stays one copy
    try {
      buffer = allocate_ ? allocate_(bytes) : memory::allocate(bytes);
    } catch (Error& e) {
      e.for_key(fqn);
      throw;
    }
    if (buffer.size() < bytes)
      throw Error(Errc::internal, "staging allocator gave " + std::to_string(buffer.size()) + " bytes for " +
                                      std::to_string(bytes)).for_key(fqn);
  }
  return buffer;
}

void StagingArea::reserve(const planning::StateDict& state_dict) {
  for_each_buffer(state_dict, [&](const std::string& name, std::uint64_t bytes, std::string_view fqn) {
    auto& reserved = buffer(name, bytes, fqn);
    auto* data = reinterpret_cast<volatile std::byte*>(reserved.data());
    for (std::uint64_t at = 0; at < bytes; at += memory::kPageBytes) data[at] = std::byte{0};
  });
}

planning::StateDict StagingArea::stage(const planning::StateDict& state_dict) {
  planning::StateDict staged;
  std::vector<storage::SliceCopy> copies;
  for (const auto& entry : state_dict.entries()) {
    const auto* tensor = std::get_if<planning::SaveTensor>(&entry.value);
    if (!tensor) {
      // The storages of the tensors an object holds are the caller's memory too.
      auto object = std::get<planning::ObjectValue>(entry.value);
      for (auto& [key, bytes] : object.storages) {
        auto& copy = buffer(storage_buffer(entry.fqn, key), bytes.size(), entry.fqn);
        copies.push_back({planning::contiguous_slice(copy.data(), DType::uint8, {static_cast<std::int64_t>(bytes.size())}),
                          planning::contiguous_slice(const_cast<std::byte*>(bytes.data()), DType::uint8,
                                                     {static_cast<std::int64_t>(bytes.size())})});
        bytes = std::span<const std::byte>(copy.data(), bytes.size());
      }
      staged.add_object(entry.path, std::move(object));
      continue;
    }
    std::vector<planning::SaveChunk> chunks;
    for (std::size_t c = 0; c < tensor->chunks.size(); ++c) {
      const auto& source = tensor->chunks[c].memory;
      const auto bytes = metadata::byte_size(source.sizes, source.dtype);
      auto& buffer = this->buffer(chunk_buffer(entry.fqn, c), bytes, entry.fqn);
      auto copy = planning::contiguous_slice(buffer.data(), source.dtype, source.sizes);
      copies.push_back({copy, source});
      chunks.push_back({tensor->chunks[c].offsets, std::move(copy)});
    }
    if (tensor->sharded) {
      staged.add_sharded_tensor(entry.path, tensor->global_size, tensor->properties, std::move(chunks));
    } else {
      staged.add_tensor(entry.path, chunks.at(0).memory, tensor->properties.requires_grad);
    }
  }
  storage::copy_slices(copies);
  return staged;
}

Checkpointer::Checkpointer(std::shared_ptr<storage::StorageWriter> storage_writer,
                           std::shared_ptr<storage::StorageReader> storage_reader, collective::ProcessGroup* process_group,
                           int coordinator_rank, bool no_dist, std::shared_ptr<planning::LoadPlanner> load_planner,
                           std::shared_ptr<planning::SavePlanner> save_planner,
                           std::function<memory::Buffer(std::uint64_t)> allocate_staging)
    : writer_(std::move(storage_writer)),
      reader_(std::move(storage_reader)),
      group_(no_dist ? nullptr : process_group),
      coordinator_rank_(no_dist ? 0 : coordinator_rank),
      load_planner_(load_planner ? std::move(load_planner) : std::make_shared<planning::DefaultLoadPlanner>()),
      save_planner_(save_planner ? std::move(save_planner) : std::make_shared<planning::DefaultSavePlanner>()),
      staging_(std::move(allocate_staging)) {}

Checkpointer::~Checkpointer() { wait_for_pending(); }

void Checkpointer::wait_for_pending() {
  if (worker_.joinable()) worker_.join();  // the outcome stays in the caller's future
}

metadata::Metadata Checkpointer::save(const planning::StateDict& state_dict) {
  wait_for_pending();
  if (!writer_) throw Error(Errc::failed_precondition, "this Checkpointer has no storage writer");
  return checkpoint::save(state_dict, *writer_, *save_planner_, group_, coordinator_rank_);
}

std::future<metadata::Metadata> Checkpointer::async_save(const planning::StateDict& state_dict) {
  wait_for_pending();  // the staging buffers and the background group are free again
  collective::Collectives ranks(group_, coordinator_rank_);
  // A rank that cannot stage must not leave the others' background saves waiting for it.
  std::shared_ptr<planning::StateDict> staged;
  ranks.run("async_save: stage", [&] {
    if (!writer_) throw Error(Errc::failed_precondition, "this Checkpointer has no storage writer");
    staged = std::make_shared<planning::StateDict>(staging_.stage(state_dict));
  });
  // The background save runs its collectives on a group of its own: the caller's thread keeps
  // the caller's group.
  if (group_ && !async_group_) async_group_ = ranks.split("async_save: group");
  std::promise<metadata::Metadata> promise;
  auto future = promise.get_future();
  worker_ = std::thread([this, staged = std::move(staged), promise = std::move(promise)]() mutable {
    try {
      promise.set_value(checkpoint::save(*staged, *writer_, *save_planner_, async_group_.get(), coordinator_rank_));
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
  });
  return future;
}

void Checkpointer::prepare_async_save(const planning::StateDict& state_dict) {
  wait_for_pending();  // the buffers may be the ones a save in flight is writing from
  staging_.reserve(state_dict);
}

storage::ReadReport Checkpointer::load(planning::Destination& destination) {
  wait_for_pending();
  if (!reader_) throw Error(Errc::failed_precondition, "this Checkpointer has no storage reader");
  return checkpoint::load(destination, *reader_, *load_planner_, group_, coordinator_rank_, read_once_);
}

}  // namespace dcp::checkpoint
