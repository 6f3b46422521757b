// The steps of `Collectives`, and the status every payload carries.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include <charconv>
#include <system_error>
module dcp.collective;
import dcp.error;
import dcp.bytes;

namespace dcp::collective {

long long parse_launcher_integer(std::string_view name, std::string_view text, long long lo, long long hi) {
  long long value = 0;
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  // from_chars takes a leading '-' but no '+' or space; a sign is never part of these values.
  if (text.empty() || text.front() == '-' || ec != std::errc{} || ptr != end || value < lo || value > hi)
    throw Error(Errc::invalid_argument, std::string(name) + "='" + escape_text(text) + "': expected a whole number from " +
                                            std::to_string(lo) + " to " + std::to_string(hi));
  return value;
}

namespace detail {
namespace {

constexpr std::byte kOk{0}, kFailed{1};
constexpr std::uint32_t kNoRank = 0xffffffff;

void put_text(Bytes& out, std::string_view text) {
  append_le(out, text.size(), 4);
  for (char c : text) out.push_back(static_cast<std::byte>(c));
}

}  // namespace

// The status is the last byte: a local step's large result (a read-once batch) gets it
// appended in place instead of being copied behind a header.
Bytes ok_payload(Bytes body) {
  if (body.capacity() == body.size()) body.reserve(body.size() + 1);  // exactly one more, not twice
  body.push_back(kOk);
  return body;
}

Bytes failure_payload(int rank, const Error& e) {
  const auto& c = e.context();
  Bytes out;
  append_le(out, static_cast<std::uint32_t>(c.rank.value_or(rank)), 4);  // -1: kNoRank
  out.push_back(static_cast<std::byte>(static_cast<int>(e.code())));
  out.push_back(static_cast<std::byte>(c.byte_offset ? 1 : 0));
  append_le(out, c.byte_offset.value_or(0), 8);
  put_text(out, c.file);
  put_text(out, c.key);
  put_text(out, e.message());
  out.push_back(kFailed);
  return out;
}

std::optional<Error> failure_of(std::span<const std::byte> payload) {
  if (payload.empty()) return Error(Errc::internal, "collective payload without a status");
  if (payload.back() == kOk) return std::nullopt;
  payload = payload.first(payload.size() - 1);
  std::size_t pos = 0;
  bool bad = false;
  auto take = [&](std::size_t n) -> std::span<const std::byte> {
    if (bad || payload.size() - pos < n) {
      bad = true;
      return {};
    }
    const auto part = payload.subspan(pos, n);
    pos += n;
    return part;
  };
  auto integer = [&](int width) -> std::uint64_t {
    const auto part = take(static_cast<std::size_t>(width));
    return bad ? 0 : load_le(part, width);
  };
  auto text = [&]() -> std::string {
    const auto part = take(static_cast<std::size_t>(integer(4)));
    return std::string(reinterpret_cast<const char*>(part.data()), part.size());
  };
  const auto rank = static_cast<std::uint32_t>(integer(4));
  const auto code = static_cast<Errc>(integer(1));
  const bool has_offset = integer(1) != 0;
  const std::uint64_t offset = integer(8);
  auto file = text();
  auto key = text();
  auto message = text();
  if (bad) return Error(Errc::internal, "short failure payload");
  Error e(code, std::move(message));
  if (!file.empty()) e.in_file(file);
  if (!key.empty()) e.for_key(key);
  if (has_offset) e.at_offset(offset);
  if (rank != kNoRank) e.on_rank(static_cast<int>(rank));
  return e;
}

std::span<const std::byte> body_of(std::span<const std::byte> payload) {
  return payload.empty() ? payload : payload.first(payload.size() - 1);
}

}  // namespace detail

namespace {

using detail::body_of;
using detail::failure_of;
using detail::failure_payload;
using detail::ok_payload;

// A result payload as the caller's bytes: the status byte dropped in place.
Bytes take_body(Bytes payload) {
  if (auto failed = failure_of(payload)) throw *failed;
  payload.pop_back();
  return payload;
}

std::optional<Error> first_failure(const std::vector<Bytes>& payloads) {
  for (const auto& p : payloads)
    if (auto failed = failure_of(p)) return failed;
  return std::nullopt;
}

std::vector<std::span<const std::byte>> bodies_of(const std::vector<Bytes>& payloads) {
  std::vector<std::span<const std::byte>> bodies;
  bodies.reserve(payloads.size());
  for (const auto& p : payloads) bodies.push_back(body_of(p));
  return bodies;
}

}  // namespace

Collectives::Collectives(ProcessGroup* group, int coordinator) : group_(group), coordinator_(coordinator) {
  if (group_) {
    rank_ = group_->rank();
    size_ = group_->size();
  }
  if (coordinator < 0 || coordinator >= size_)
    throw Error(Errc::invalid_argument, "coordinator rank " + std::to_string(coordinator) + " outside the group of " +
                                            std::to_string(size_));
}

Bytes Collectives::status_of(const Local& local) {
  try {
    return ok_payload(local());
  } catch (...) {
    return failure_payload(failure_rank(), current_exception_as_error());
  }
}

std::vector<Bytes> Collectives::gather(Bytes local, std::string_view step) {
  if (!group_) {
    std::vector<Bytes> all;
    all.push_back(std::move(local));
    return all;
  }
  return group_->gather(std::move(local), coordinator_, step);
}

Bytes Collectives::reduce_scatter(std::string_view step, const Local& local,
                                  const std::function<std::vector<Bytes>(Results)>& reduce) {
  auto gathered = gather(status_of(local), step);
  std::vector<Bytes> per_rank;
  if (is_coordinator()) {
    auto failed = first_failure(gathered);
    if (!failed) {
      try {
        const auto bodies = bodies_of(gathered);
        per_rank = reduce(bodies);
        if (per_rank.size() != static_cast<std::size_t>(size_))
          throw Error(Errc::internal, std::string(step) + ": " + std::to_string(per_rank.size()) + " results for " +
                                          std::to_string(size_) + " ranks");
        for (auto& p : per_rank) p = ok_payload(std::move(p));
      } catch (...) {
        failed = current_exception_as_error();
      }
    }
    gathered.clear();
    if (failed) per_rank.assign(static_cast<std::size_t>(size_), failure_payload(failure_rank(), *failed));
  }
  if (!group_) return take_body(std::move(per_rank.at(0)));
  return take_body(group_->scatter(std::move(per_rank), coordinator_, step));
}

Bytes Collectives::all_reduce(std::string_view step, const Local& local, const std::function<Bytes(Results)>& reduce) {
  auto gathered = gather(status_of(local), step);
  Bytes outcome;
  if (is_coordinator()) {
    if (auto failed = first_failure(gathered)) {
      outcome = failure_payload(failure_rank(), *failed);
    } else {
      outcome = status_of([&] { return reduce(bodies_of(gathered)); });
    }
    gathered.clear();
  }
  if (!group_) return take_body(std::move(outcome));
  return take_body(group_->broadcast(std::move(outcome), coordinator_, step));
}

Bytes Collectives::broadcast(std::string_view step, const Local& produce, std::optional<int> root) {
  const int from = root.value_or(coordinator_);
  if (from < 0 || from >= size_)
    throw Error(Errc::invalid_argument, std::string(step) + ": root " + std::to_string(from) + " outside the group of " +
                                            std::to_string(size_));
  Bytes payload;
  if (rank_ == from) payload = status_of(produce);
  if (!group_) return take_body(std::move(payload));
  return take_body(group_->broadcast(std::move(payload), from, step));
}

void Collectives::run(std::string_view step, const std::function<void()>& local) {
  (void)all_reduce(
      step,
      [&] {
        local();
        return Bytes{};
      },
      [](Results) { return Bytes{}; });
}

std::unique_ptr<ProcessGroup> Collectives::split(std::string_view step) {
  if (!group_) return nullptr;
  return group_->split(step);
}

}  // namespace dcp::collective
