// Loading: torch's in-place load (one process or a process group), and full-tensor loads into
// host buffers in bounded batches.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.bytes;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.collective;

namespace dcp::checkpoint {
std::uint64_t selected_tensor_bytes(const metadata::Metadata& md, const LoadOptions& options) {
  std::uint64_t total = 0;
  for (const auto& item : md.items)
    if (item.is_tensor() && detail::is_selected(options, item.fqn))
      total += metadata::byte_size(item.tensor().size, item.tensor().properties.dtype);
  return total;
}

namespace {

using collective::Bytes;
using collective::Collectives;

// A rank's local plan on the wire: whether its reader can share items, its host
// (length-prefixed), then the plan.
Bytes local_payload(bool can_share, std::string_view host, const planning::LoadPlan& plan) {
  Bytes out{std::byte{can_share ? std::uint8_t{1} : std::uint8_t{0}}};
  append_le(out, host.size(), 4);
  for (char c : host) out.push_back(static_cast<std::byte>(c));
  const auto encoded = planning::encode_plan(plan);
  out.insert(out.end(), encoded.begin(), encoded.end());
  return out;
}

// Inverse of local_payload; `host` views `body`.
planning::LoadPlan decode_local(std::span<const std::byte> body, bool& can_share, std::string_view& host) {
  const std::uint64_t length = body.size() >= 5 ? load_le(body.subspan(1), 4) : 0;
  if (body.size() < 5 || length > body.size() - 5)
    throw Error(Errc::data_loss, "local plan message of " + std::to_string(body.size()) + " bytes is truncated");
  can_share = body[0] == std::byte{1};
  host = {reinterpret_cast<const char*>(body.data() + 5), static_cast<std::size_t>(length)};
  return planning::decode_plan(body.subspan(5 + length));
}

// The hosts of the ranks as small numbers, equal where the names are.
std::vector<int> number_hosts(std::span<const std::string_view> hosts) {
  std::map<std::string_view, int> numbers;
  std::vector<int> out;
  for (const auto host : hosts) out.push_back(numbers.try_emplace(host, static_cast<int>(numbers.size())).first->second);
  return out;
}

// The coordinator's answer to one rank: whether any item is shared (the same byte for every
// rank, readable without decoding the rest), its global plan (length-prefixed), the
// coordinator's broadcast batch size (every rank must cut the same batches), then the shared
// reads.
Bytes central_payload(const planning::LoadPlan& plan, std::uint64_t batch_bytes, bool sharing,
                      const std::vector<std::byte>& shared) {
  const auto encoded = planning::encode_plan(plan);
  Bytes out;
  out.reserve(17 + encoded.size() + shared.size() + 1);  // + the status byte
  out.push_back(std::byte{sharing ? std::uint8_t{1} : std::uint8_t{0}});
  append_le(out, encoded.size(), 8);
  out.insert(out.end(), encoded.begin(), encoded.end());
  append_le(out, batch_bytes, 8);
  out.insert(out.end(), shared.begin(), shared.end());
  return out;
}

bool shares_items(std::span<const std::byte> central) { return !central.empty() && central[0] == std::byte{1}; }

// Inverse of central_payload.
planning::LoadPlan decode_central(std::span<const std::byte> message, std::vector<planning::SharedRead>& shared,
                                  std::uint64_t& batch_bytes) {
  const auto body = message.empty() ? message : message.subspan(1);
  const std::uint64_t length = body.size() >= 8 ? load_le(body, 8) : 0;
  if (body.size() < 16 || length > body.size() - 16)
    throw Error(Errc::data_loss, "global plan message of " + std::to_string(message.size()) + " bytes is truncated");
  batch_bytes = load_le(body.subspan(8 + length), 8);
  shared = planning::decode_shared_reads(body.subspan(16 + length));
  return planning::decode_plan(body.subspan(8, length));
}

// Everything of torch's load sequence after `.metadata`, as steps of `ranks`: local plans →
// the coordinator's global plan (and the shared reads) → each rank's reads → every rank learns
// whether all succeeded. `md` is the validated metadata, or (for a rank that has none yet)
// empty, and `metadata_bytes` the coordinator's `.metadata`, decoded and validated inside
// this rank's first step so that its failure travels too.
storage::ReadReport run_load(planning::Destination& destination, storage::StorageReader& reader,
                             planning::LoadPlanner& planner, std::optional<metadata::ValidatedMetadata> md,
                             std::span<const std::byte> metadata_bytes, Collectives& ranks, const ReadOnce& read_once) {
  const bool is_coordinator = ranks.is_coordinator();
  const auto central = ranks.reduce_scatter(
      "load: plan",
      [&] {
        if (!md) md = reader.metadata_from_bytes(metadata_bytes);
        planner.set_up_planner(destination, *md, is_coordinator);
        reader.set_up_storage_reader(*md, is_coordinator);
        const auto host = read_once.host.empty() ? host_identity() : read_once.host;
        return local_payload(reader.can_share_items(), host, reader.prepare_local_plan(planner.create_local_plan()));
      },
      [&](Collectives::Results bodies) {
        std::vector<planning::LoadPlan> plans;
        std::vector<std::string_view> hosts;
        bool all_share = read_once.enabled && ranks.size() > 1;
        for (const auto& body : bodies) {
          bool can_share = false;
          plans.push_back(decode_local(body, can_share, hosts.emplace_back()));
          all_share = all_share && can_share;
        }
        plans = reader.prepare_global_plan(planner.create_global_plan(std::move(plans)));
        // Without a page cache to share (an object store) every rank reads from the storage on
        // its own: each counts as a host of its own, and the storage is the slowest link.
        const bool host_cache = reader.reads_share_host_cache();
        std::vector<std::string> own_hosts;
        if (!host_cache) {
          for (std::size_t r = 0; r < hosts.size(); ++r) own_hosts.push_back(std::to_string(r));
          for (std::size_t r = 0; r < hosts.size(); ++r) hosts[r] = own_hosts[r];
        }
        const auto shared =
            all_share ? planning::plan_read_once(plans, *md,
                                                 {number_hosts(hosts), host_cache ? read_once.slowest_link
                                                                                  : planning::ReadTopology::Link::storage})
                      : std::vector<planning::SharedRead>{};
        const auto encoded_shared = planning::encode_shared_reads(shared);
        std::vector<Bytes> encoded;
        for (const auto& plan : plans)
          encoded.push_back(central_payload(plan, read_once.batch_bytes, !shared.empty(), encoded_shared));
        return encoded;
      });

  storage::ReadReport report;
  planning::LoadPlan plan;
  std::uint64_t batch_bytes = 0;             // the coordinator's
  std::vector<planning::SharedRead> shared;  // the same on every rank
  auto decode = [&] { plan = planner.finish_plan(decode_central(central, shared, batch_bytes)); };
  std::optional<Error> failed;
  if (shares_items(central)) {
    // Every rank must cut the same broadcasts from the same shared reads: the decode is a step
    // of its own, so that no rank enters the broadcasts without them.
    ranks.run("load: shared reads", decode);
    failed = detail::read_with_sharing(reader, planner, plan, shared, ranks, batch_bytes, report);
  } else {
    try {
      decode();
      report = reader.read_data(plan, planner);
    } catch (...) {
      failed = current_exception_as_error();
    }
  }
  // torch's final all_gather of the outcome: a rank whose reads failed fails the others too.
  ranks.run("load: read", [&] {
    if (failed) throw *failed;
  });
  return report;
}

// Step 0: the coordinator reads `.metadata` once, validates it and sends its bytes (one source
// of truth); `md` receives the coordinator's own validated copy.
Bytes share_metadata(storage::StorageReader& reader, Collectives& ranks, std::optional<metadata::ValidatedMetadata>& md) {
  return ranks.broadcast("load: metadata", [&] {
    auto bytes = reader.read_metadata_bytes();
    md = reader.metadata_from_bytes(bytes);
    return bytes;
  });
}

}  // namespace

storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, collective::ProcessGroup* group, int coordinator_rank,
                         const ReadOnce& read_once) {
  Collectives ranks(group, coordinator_rank);
  // The other ranks decode and validate the coordinator's bytes in their first step, so that a
  // failure there travels with the local plans instead of costing another round.
  std::optional<metadata::ValidatedMetadata> md;
  const auto bytes = share_metadata(reader, ranks, md);
  return run_load(destination, reader, planner, std::move(md), bytes, ranks, read_once);
}

metadata::ValidatedMetadata read_metadata(storage::StorageReader& reader, collective::ProcessGroup* group,
                                          int coordinator_rank) {
  Collectives ranks(group, coordinator_rank);
  std::optional<metadata::ValidatedMetadata> md;
  const auto bytes = share_metadata(reader, ranks, md);
  // Every rank checks the bytes against its own view of the storage (the coordinator did).
  ranks.run("load: check metadata", [&] {
    if (!md) md = reader.metadata_from_bytes(bytes);
  });
  return *std::move(md);
}

storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, const metadata::ValidatedMetadata& md,
                         collective::ProcessGroup* group, int coordinator_rank, const ReadOnce& read_once) {
  Collectives ranks(group, coordinator_rank);
  return run_load(destination, reader, planner, md, {}, ranks, read_once);
}

std::span<const std::byte> TensorBuffer::bytes() const {
  return {memory.data(), static_cast<std::size_t>(metadata::byte_size(shape, dtype))};
}

planning::TensorSlice TensorBuffer::slice() { return planning::contiguous_slice(memory.data(), dtype, shape); }

storage::ReadReport for_each_tensor(const std::filesystem::path& checkpoint_dir, const metadata::ValidatedMetadata& md,
                                    const LoadOptions& options,
                                    const std::function<void(const std::string&, TensorBuffer)>& consume) {
  storage::ReadReport total;

  std::vector<const metadata::ItemMetadata*> pending;
  for (const auto& item : md->items)
    if (item.is_tensor() && detail::is_selected(options, item.fqn)) pending.push_back(&item);

  const auto reader = storage::open_reader(checkpoint_dir, options.read);
  std::size_t next = 0;
  while (next < pending.size()) {
    // One batch: tensors up to batch_bytes, allocated and read in parallel.
    planning::Destination destination;
    std::vector<std::pair<std::string, TensorBuffer>> batch;
    std::uint64_t bytes = 0;
    while (next < pending.size()) {
      const auto& item = *pending[next];
      const auto& t = item.tensor();
      const auto size = metadata::byte_size(t.size, t.properties.dtype);
      if (!batch.empty() && bytes + size > options.batch_bytes) break;
      TensorBuffer tensor{t.properties.dtype, t.size, {}};
      try {
        tensor.memory = options.allocate ? options.allocate(size) : memory::allocate(size);
        if (tensor.memory.size() < size)
          throw Error(Errc::internal, "LoadOptions::allocate gave " + std::to_string(tensor.memory.size()) +
                                          " bytes for a " + std::to_string(size) + "-byte tensor");
      } catch (Error& e) {
        e.for_key(item.fqn);
        throw;
      }
      planning::TensorDestination dest;
      dest.global_size = t.size;
      dest.dtype = t.properties.dtype;
      dest.chunks.push_back({metadata::Shape(t.size.size(), 0), t.size, tensor.slice()});
      destination.add_tensor(item.fqn, std::move(dest));
      batch.emplace_back(item.fqn, std::move(tensor));
      bytes += size;
      ++next;
    }
    planning::DefaultLoadPlanner planner;
    auto report = load(destination, *reader, planner, md);
    total.merge(std::move(report));
    for (auto& [fqn, tensor] : batch) consume(fqn, std::move(tensor));
  }
  return total;
}

std::vector<std::pair<std::string, pickle::Document>> load_objects(const std::filesystem::path& checkpoint_dir,
                                                                    const metadata::ValidatedMetadata& md,
                                                                    const LoadOptions& options) {
  planning::Destination destination;
  for (const auto& item : md->items)
    if (!item.is_tensor() && detail::is_selected(options, item.fqn)) destination.add_object(item.fqn);
  std::vector<std::pair<std::string, pickle::Document>> objects;
  if (destination.size() == 0) return objects;
  storage::ReadOptions read_options = options.read;
  read_options.collect_errors = false;  // every object below must have loaded
  const auto reader = storage::open_reader(checkpoint_dir, read_options);
  planning::DefaultLoadPlanner planner;
  (void)load(destination, *reader, planner, md);
  for (const auto& [fqn, entry] : destination.entries()) {
    const auto* bytes = planner.loaded_bytes(fqn);
    const auto* info = md->find_storage(fqn, nullptr);
    try {
      objects.emplace_back(fqn, record::parse_object(*bytes));
    } catch (Error& e) {
      e.add_offset(info->offset);
      e.in_file(reader->location_of(info->relative_path));
      e.for_key(fqn);
      throw;
    }
  }
  return objects;
}

}  // namespace dcp::checkpoint
