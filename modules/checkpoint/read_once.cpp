// Read-once loading, a rank's side: its host, its own reads, then the shared items' broadcasts.
module;
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>
module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.storage;
import dcp.collective;

namespace dcp::checkpoint {

std::string host_identity() {
  if (const char* host = std::getenv("DCPP_HOST"); host && *host) return host;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (boot && std::getline(boot, id) && !id.empty()) return "boot:" + id;
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) == 0 && name[0]) return std::string("host:") + name;
  return "unknown";
}

}  // namespace dcp::checkpoint

namespace dcp::checkpoint::detail {
namespace {

using Key = std::pair<std::string, metadata::Shape>;

Key key_of(const metadata::MetadataIndex& index) { return {index.fqn, index.offset.value_or(metadata::Shape{})}; }

// The batch of shared reads that starts at `first`: consecutive reads of one reader rank, at
// most `budget` stored bytes (or one read, if larger).
std::size_t batch_end(std::span<const planning::SharedRead> shared, std::size_t first, std::uint64_t budget) {
  std::size_t end = first + 1;
  std::uint64_t bytes = shared[first].stored_bytes;
  while (end < shared.size() && shared[end].reader == shared[first].reader && shared[end].stored_bytes <= budget &&
         bytes <= budget - shared[end].stored_bytes)
    bytes += shared[end++].stored_bytes;
  return end;
}

// Runs `step` unless `failure` is set; its exception becomes `failure`.
template <class Step>
void attempt(std::optional<Error>& failure, Step&& step) {
  if (failure) return;
  try {
    step();
  } catch (...) {
    failure = current_exception_as_error();
  }
}

// The reader's payload for shared[first, end): each item's stored bytes, read straight into
// place (with room for the status byte the broadcast appends).
collective::Bytes read_batch(storage::StorageReader& reader, std::span<const planning::SharedRead> batch,
                             std::uint64_t bytes, storage::ReadReport& report) {
  collective::Bytes payload;
  payload.reserve(static_cast<std::size_t>(bytes) + 1);
  payload.resize(static_cast<std::size_t>(bytes));
  std::size_t at = 0;
  for (const auto& read : batch) {
    reader.read_item(read.item, std::span(payload).subspan(at, static_cast<std::size_t>(read.stored_bytes)), report);
    at += static_cast<std::size_t>(read.stored_bytes);
  }
  return payload;
}

}  // namespace

std::optional<Error> read_with_sharing(storage::StorageReader& reader, planning::LoadPlanner& planner,
                                       const planning::LoadPlan& plan, std::span<const planning::SharedRead> shared,
                                       collective::Collectives& ranks, std::uint64_t batch_bytes_limit,
                                       storage::ReadReport& report) {
  // This thread's failure (its own reads); the consumer's, which runs a batch's reads while
  // this thread takes part in the next broadcast, is kept apart and joined in batch order, so
  // the first failure in plan order wins.
  std::optional<Error> failure;

  // This rank's items: those it reads itself, and those of each shared read.
  std::map<Key, std::size_t> position;
  for (std::size_t k = 0; k < shared.size(); ++k) position.emplace(key_of(shared[k].item), k);
  planning::LoadPlan own;
  std::vector<planning::LoadPlan> from_shared(shared.size());
  for (const auto& item : plan.items) {
    const auto it = position.find(key_of(item.storage_index));
    (it == position.end() ? own : from_shared[it->second]).items.push_back(item);
  }
  attempt(failure, [&] { report.merge(reader.read_data(own, planner)); });

  // One consumer at a time: the planner and the report are only touched by it until joined.
  // Declared after what it uses: if a broadcast throws, the future's destructor waits for the
  // task before those go.
  std::optional<Error> consumer_failure;
  storage::ReadReport consumer_report;
  std::future<void> consumer;
  auto join = [&] {
    try {
      if (consumer.valid()) consumer.get();  // the task catches everything it can itself
    } catch (...) {  // not even its error could be built (no memory): keep the code
      if (!consumer_failure) consumer_failure = Error(Errc::resource_exhausted, "out of memory");
    }
    if (!failure && consumer_failure) failure = std::move(consumer_failure);
  };

  for (std::size_t first = 0; first < shared.size();) {
    const std::size_t end = batch_end(shared, first, batch_bytes_limit);
    const int root = shared[first].reader;
    std::uint64_t batch_bytes = 0;
    for (std::size_t k = first; k < end; ++k) batch_bytes += shared[k].stored_bytes;

    // A reader that failed (here or before) sends its failure, and every rank throws it here.
    auto payload = ranks.broadcast(
        "load: shared items",
        [&] {
          if (failure) throw *failure;
          return read_batch(reader, shared.subspan(first, end - first), batch_bytes, report);
        },
        root);
    join();  // the previous batch's reads are done (or failed) before this one starts

    if (!failure) {
      planning::LoadPlan reads;
      for (std::size_t k = first; k < end; ++k)
        for (auto& item : from_shared[k].items) reads.items.push_back(std::move(item));
      if (!reads.items.empty())
        consumer = std::async(std::launch::async, [&, first, end, batch_bytes, root, reads = std::move(reads),
                                                   payload = std::move(payload)] {
          attempt(consumer_failure, [&] {
            const auto body = std::span(payload);
            if (body.size() != batch_bytes)
              throw Error(Errc::internal, "rank " + std::to_string(root) + " sent " + std::to_string(body.size()) +
                                              " bytes of shared items, the plan says " + std::to_string(batch_bytes));
            storage::SharedItems items;
            std::uint64_t offset = 0;
            for (std::size_t k = first; k < end; ++k) {
              items.add(shared[k].item, body.subspan(offset, shared[k].stored_bytes));
              offset += shared[k].stored_bytes;
            }
            auto read = reader.read_data(reads, planner, items);
            if (ranks.rank() == root) read.received_bytes = 0;  // its own read, counted in storage_bytes
            consumer_report.merge(std::move(read));
          });
        });
    }
    first = end;
  }
  join();
  report.merge(std::move(consumer_report));
  return failure;
}

}  // namespace dcp::checkpoint::detail
