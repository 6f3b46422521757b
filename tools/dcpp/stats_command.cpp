// `dcpp inspect --stats`: is anything in a checkpoint broken? Per tensor the NaN, Inf and zero
// counts, and min, max, mean, std (population, ddof 0) and absmax of its finite elements, all
// in float64; tensors are read in bounded batches and each is summarised in element ranges on a
// thread pool, the ranges' partial results merged in order (Chan's update), so a run's numbers
// do not depend on the schedule. A summary line names the tensors holding NaN or Inf.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cli.hpp"
#include "tensor_source.hpp"
import dcp.error;
import dcp.dtype;
import dcp.json;
import dcp.metadata;
import dcp.checkpoint;

namespace dcpp_cli {

dcp::checkpoint::LoadOptions load_options(const Args& args);  // load_command.cpp

namespace {

constexpr std::uint64_t kBatchBytes = std::uint64_t{512} << 20;
constexpr std::uint64_t kTaskElements = std::uint64_t{1} << 20;
constexpr std::size_t kBlock = 4096;

struct Stats {
  std::uint64_t finite = 0, zeros = 0, nan = 0, inf = 0;
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double mean = 0, m2 = 0;  // of the finite elements (m2: sum of squared deviations)

  /// Adds a block of values: two passes over it (sum, then squared deviations from its own
  /// mean), merged as one part, which costs no division per element.
  void add(std::span<const double> xs) {
    Stats block;
    double sum = 0;
    for (const double x : xs) {
      if (std::isnan(x)) {
        ++block.nan;
      } else if (std::isinf(x)) {
        ++block.inf;
      } else {
        block.zeros += x == 0;
        block.min = std::min(block.min, x);
        block.max = std::max(block.max, x);
        ++block.finite;
        sum += x;
      }
    }
    if (block.finite) {
      block.mean = sum / static_cast<double>(block.finite);
      for (const double x : xs)
        if (std::isfinite(x)) block.m2 += (x - block.mean) * (x - block.mean);
    }
    merge(block);
  }
  void merge(const Stats& o) {
    zeros += o.zeros;
    nan += o.nan;
    inf += o.inf;
    min = std::min(min, o.min);
    max = std::max(max, o.max);
    if (o.finite == 0) return;
    const double n = static_cast<double>(finite), m = static_cast<double>(o.finite);
    const double delta = o.mean - mean;
    mean += delta * m / (n + m);
    m2 += o.m2 + delta * delta * n * m / (n + m);
    finite += o.finite;
  }
  double std_dev() const { return std::sqrt(m2 / static_cast<double>(finite)); }
};

struct TensorStats {
  const SourceEntry* entry = nullptr;
  std::optional<Stats> stats;  // absent for dtypes without float64 values
};

std::string shape_text(const dcp::metadata::Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::vector<TensorStats> compute(const TensorSource& source, const std::vector<std::string>& keys, int threads) {
  std::map<std::string, std::size_t> slot;
  std::vector<TensorStats> out;
  for (const auto& key : keys) {
    slot.emplace(key, out.size());
    out.push_back({source.find(key), std::nullopt});
  }
  std::vector<std::string> with_values;
  for (const auto& key : keys)
    if (has_float64_values(source.find(key)->dtype)) with_values.push_back(key);
  for (const auto& batch : batches_of(source, with_values, kBatchBytes)) {
    std::map<std::string, dcp::checkpoint::TensorBuffer> tensors;
    source.read(batch, [&](const std::string& key, dcp::checkpoint::TensorBuffer t) { tensors.emplace(key, std::move(t)); });
    struct Task {
      const std::string* key;
      std::uint64_t first, n;
      Stats stats;
    };
    std::vector<Task> tasks;
    for (const auto& key : batch) {
      const std::uint64_t elements = dcp::metadata::numel(source.find(key)->shape);
      for (std::uint64_t first = 0; first < elements; first += kTaskElements)
        tasks.push_back({&key, first, std::min(kTaskElements, elements - first), {}});
    }
    parallel_for(tasks.size(), threads, [&](std::size_t i) {
      Task& task = tasks[i];
      const auto& t = tensors.at(*task.key);
      std::vector<double> xs(kBlock);
      for (std::uint64_t start = 0; start < task.n; start += kBlock) {
        const std::size_t m = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, task.n - start));
        to_float64(t.bytes(), t.dtype, task.first + start, std::span(xs.data(), m));
        task.stats.add(std::span<const double>(xs.data(), m));
      }
    });
    for (const auto& key : batch) out[slot.at(key)].stats.emplace();
    for (const auto& task : tasks) out[slot.at(*task.key)].stats->merge(task.stats);
  }
  return out;
}

}  // namespace

int run_stats(const Args& args) {
  const auto options = load_options(args);
  auto read_options = options;
  read_options.select = nullptr;
  const TensorSource source(args.positional[0], read_options);
  std::vector<std::string> keys;
  for (const auto& e : source.entries())
    if (e.tensor && (!options.select || options.select(e.key))) keys.push_back(e.key);
  const auto all = compute(source, keys, options.read.threads);
  std::vector<std::string> nonfinite;
  for (const auto& t : all)
    if (t.stats && (t.stats->nan || t.stats->inf)) nonfinite.push_back(t.entry->key);

  if (args.has("json")) {
    dcp::json::JsonWriter w;
    w.begin_object().key("tensors").begin_array();
    for (const auto& t : all) {
      const SourceEntry& e = *t.entry;
      w.begin_object().key("key").value(e.key).key("dtype").value(dcp::dtype_name(e.dtype)).key("shape");
      w.int_array(e.shape).key("elements").value(dcp::metadata::numel(e.shape));
      if (!t.stats) {
        for (const char* field : {"min", "max", "mean", "std", "absmax", "zeros", "nan", "inf"}) w.key(field).null();
      } else {
        const Stats& s = *t.stats;
        auto finite = [&](const char* field, double v) {
          w.key(field);
          if (s.finite) w.value(v);
          else w.null();
        };
        finite("min", s.min);
        finite("max", s.max);
        finite("mean", s.mean);
        finite("std", s.finite ? s.std_dev() : 0);
        finite("absmax", std::max(std::fabs(s.min), std::fabs(s.max)));
        w.key("zeros").value(s.zeros).key("nan").value(s.nan).key("inf").value(s.inf);
      }
      w.end_object();
    }
    w.end_array().key("nonfinite").begin_array();
    for (const auto& k : nonfinite) w.value(k);
    w.end_array().end_object();
    std::printf("%s\n", w.str().c_str());
  } else {
    std::vector<std::vector<std::string>> rows{
        {"KEY", "DTYPE", "SHAPE", "MIN", "MAX", "MEAN", "STD", "ABSMAX", "ZEROS", "NAN", "INF"}};
    for (const auto& t : all) {
      const SourceEntry& e = *t.entry;
      std::vector<std::string> row{dcp::escape_text(e.key), std::string(dcp::dtype_name(e.dtype)), shape_text(e.shape)};
      if (!t.stats) {
        row.resize(rows[0].size(), "-");
      } else {
        const Stats& s = *t.stats;
        for (const double v : {s.min, s.max, s.mean, s.finite ? s.std_dev() : 0.0,
                               std::max(std::fabs(s.min), std::fabs(s.max))})
          row.push_back(s.finite ? number(v) : "-");
        for (const auto n : {s.zeros, s.nan, s.inf}) row.push_back(std::to_string(n));
      }
      rows.push_back(std::move(row));
    }
    std::vector<std::size_t> width(rows[0].size(), 0);
    for (const auto& r : rows)
      for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
    for (const auto& r : rows) {
      std::string line;
      for (std::size_t i = 0; i < r.size(); ++i)
        line += r[i] + (i + 1 < r.size() ? std::string(width[i] - r[i].size() + 2, ' ') : "");
      std::printf("%s\n", line.c_str());
    }
    if (nonfinite.empty()) {
      std::printf("\n%zu tensors, none holds NaN or Inf\n", all.size());
    } else {
      std::string list;
      for (const auto& k : nonfinite) list += (list.empty() ? "" : ", ") + dcp::escape_text(k);
      std::printf("\n%zu tensors, %zu hold NaN or Inf: %s\n", all.size(), nonfinite.size(), list.c_str());
    }
  }
  return args.has("fail-on-nonfinite") && !nonfinite.empty() ? 1 : 0;
}

}  // namespace dcpp_cli
