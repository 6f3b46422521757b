// `dcpp diff A B`: are two checkpoints (of any layouts dcpp reads) the same? Keys only in one,
// kind, dtype and shape differences, objects compared as JSON values, tensors element by
// element: bit-exactly by default (--equal-nan: any two NaNs equal), or as torch.allclose with
// --rtol/--atol. Tensors are read in batches of bounded size, both sides at once, and compared
// on a thread pool in element ranges. Exit 0 same, 1 different.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
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

using dcp::checkpoint::TensorBuffer;

// Tensor bytes read per side and batch: two batches are in memory at once.
constexpr std::uint64_t kBatchBytes = std::uint64_t{256} << 20;
// Elements one comparison task covers, and one conversion to float64 at a time.
constexpr std::uint64_t kTaskElements = std::uint64_t{1} << 20;
constexpr std::size_t kBlock = 4096;

struct Tolerance {
  bool exact = true;  // no --rtol/--atol: bit-exact
  double rtol = 1e-5;
  double atol = 1e-8;
  bool equal_nan = false;
};

// What differs in one tensor: elements that differ, the largest differences over elements
// without NaN (as float64; absent for dtypes without float64 values) and the first index.
struct ValueDiff {
  std::uint64_t count = 0;
  std::uint64_t first = UINT64_MAX;
  double max_abs = 0;
  double max_rel = 0;
  void merge(const ValueDiff& o) {
    count += o.count;
    first = std::min(first, o.first);
    max_abs = std::max(max_abs, o.max_abs);
    max_rel = std::max(max_rel, o.max_rel);
  }
};

struct Difference {
  std::string key;
  std::string what;  // "kind", "dtype", "shape", "values", "object"
  std::string a, b;  // the two sides' kind, dtype, shape or JSON
  std::optional<ValueDiff> values;
  const SourceEntry* entry = nullptr;
  bool float_values = false;
};

Difference mismatch(const std::string& key, std::string what, std::string a, std::string b) {
  Difference d;
  d.key = key;
  d.what = std::move(what);
  d.a = std::move(a);
  d.b = std::move(b);
  return d;
}

double parse_tolerance(const Args& args, std::string_view name, double fallback) {
  const auto text = args.get(name);
  if (!text) return fallback;
  try {
    std::size_t used = 0;
    const double v = std::stod(*text, &used);
    if (used == text->size() && v >= 0 && std::isfinite(v)) return v;
  } catch (...) {
  }
  throw UsageError{"--" + std::string(name) + " takes a finite number >= 0, not '" + *text + "'"};
}

void note(ValueDiff& d, std::uint64_t index, std::optional<std::pair<double, double>> xy) {
  ++d.count;
  d.first = std::min(d.first, index);
  if (!xy) return;
  const auto [x, y] = *xy;
  if (std::isnan(x) || std::isnan(y)) return;
  const double abs = std::fabs(x - y);
  const double rel = abs == 0 ? 0 : (y == 0 ? std::numeric_limits<double>::infinity() : abs / std::fabs(y));
  if (!std::isnan(abs)) d.max_abs = std::max(d.max_abs, abs);
  if (!std::isnan(rel)) d.max_rel = std::max(d.max_rel, rel);
}

// Compares elements [first, first + n) of two tensors of one dtype.
ValueDiff compare_range(const TensorBuffer& a, const TensorBuffer& b, std::uint64_t first, std::uint64_t n,
                        const Tolerance& tol) {
  ValueDiff d;
  const std::size_t itemsize = dcp::dtype_itemsize(a.dtype);
  const std::byte* pa = a.bytes().data() + first * itemsize;
  const std::byte* pb = b.bytes().data() + first * itemsize;
  const bool floats = has_float64_values(a.dtype);
  if (tol.exact && std::memcmp(pa, pb, n * itemsize) == 0) return d;
  std::vector<double> xs(floats ? kBlock : 0), ys(floats ? kBlock : 0);
  for (std::uint64_t start = 0; start < n; start += kBlock) {
    const std::size_t m = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, n - start));
    if (tol.exact && std::memcmp(pa + start * itemsize, pb + start * itemsize, m * itemsize) == 0) continue;
    if (floats) {
      to_float64(a.bytes(), a.dtype, first + start, std::span(xs.data(), m));
      to_float64(b.bytes(), b.dtype, first + start, std::span(ys.data(), m));
    }
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint64_t at = first + start + i;
      if (!floats) {
        if (std::memcmp(pa + (start + i) * itemsize, pb + (start + i) * itemsize, itemsize) != 0) note(d, at, {});
        continue;
      }
      const double x = xs[i], y = ys[i];
      const bool both_nan = std::isnan(x) && std::isnan(y);
      bool same;
      if (tol.exact) {
        same = std::memcmp(pa + (start + i) * itemsize, pb + (start + i) * itemsize, itemsize) == 0 ||
               (tol.equal_nan && both_nan);
      } else {  // torch.isclose: equal, or both NaN with equal_nan, or a finite error within bounds
        const double error = std::fabs(x - y);
        same = x == y || (tol.equal_nan && both_nan) ||
               (std::isfinite(error) && error <= tol.atol + std::fabs(tol.rtol * y));
      }
      if (!same) note(d, at, std::pair{x, y});
    }
  }
  return d;
}

std::vector<std::int64_t> unravel(std::uint64_t flat, const dcp::metadata::Shape& shape) {
  std::vector<std::int64_t> index(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    index[d] = static_cast<std::int64_t>(flat % static_cast<std::uint64_t>(shape[d]));
    flat /= static_cast<std::uint64_t>(shape[d]);
  }
  return index;
}

std::string shape_text(const dcp::metadata::Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Reads the tensors `keys` of both sides a batch at a time (the two sides at once) and
// compares each pair; returns the differing ones.
std::map<std::string, ValueDiff> compare_tensors(const TensorSource& a, const TensorSource& b,
                                                 const std::vector<std::string>& keys, const Tolerance& tol,
                                                 int threads) {
  std::map<std::string, ValueDiff> result;
  for (const auto& batch : batches_of(a, keys, kBatchBytes)) {
    std::map<std::string, TensorBuffer> left, right;
    auto reading = std::async(std::launch::async, [&] {
      a.read(batch, [&](const std::string& key, TensorBuffer t) { left.emplace(key, std::move(t)); });
    });
    try {
      b.read(batch, [&](const std::string& key, TensorBuffer t) { right.emplace(key, std::move(t)); });
    } catch (...) {
      reading.wait();
      throw;
    }
    reading.get();
    struct Task {
      const std::string* key;
      std::uint64_t first, n;
    };
    std::vector<Task> tasks;
    for (const auto& key : batch) {
      const std::uint64_t elements = dcp::metadata::numel(a.find(key)->shape);
      for (std::uint64_t first = 0; first < elements; first += kTaskElements)
        tasks.push_back({&key, first, std::min(kTaskElements, elements - first)});
    }
    std::mutex mutex;
    parallel_for(tasks.size(), threads, [&](std::size_t i) {
      const Task& t = tasks[i];
      const TensorBuffer& x = left.at(*t.key);
      // Complex, float8 and quantized values have no float64 form: compared bit-exactly.
      Tolerance own = tol;
      own.exact = tol.exact || !has_float64_values(x.dtype);
      const ValueDiff d = compare_range(x, right.at(*t.key), t.first, t.n, own);
      if (d.count == 0) return;
      std::lock_guard lock(mutex);
      result[*t.key].merge(d);
    });
  }
  return result;
}

}  // namespace

int run_diff(const Args& args) {
  Tolerance tol;
  tol.exact = !args.has("rtol") && !args.has("atol");
  tol.rtol = parse_tolerance(args, "rtol", tol.rtol);
  tol.atol = parse_tolerance(args, "atol", tol.atol);
  tol.equal_nan = args.has("equal-nan");
  auto options = load_options(args);
  const auto select = options.select;
  options.select = nullptr;  // the sources read what the comparison asks for
  auto selected = [&](const std::string& key) { return !select || select(key); };
  const TensorSource a(args.positional[0], options), b(args.positional[1], options);

  std::vector<std::string> only_a, only_b, tensors;
  std::vector<Difference> differences;
  std::size_t compared = 0;
  for (const auto& ea : a.entries()) {
    if (!selected(ea.key)) continue;
    const SourceEntry* eb = b.find(ea.key);
    if (!eb) {
      only_a.push_back(ea.key);
      continue;
    }
    ++compared;
    auto kind = [](const SourceEntry& e) { return std::string(e.tensor ? "tensor" : "object"); };
    if (ea.tensor != eb->tensor) {
      differences.push_back(mismatch(ea.key, "kind", kind(ea), kind(*eb)));
    } else if (ea.tensor && ea.dtype != eb->dtype) {
      differences.push_back(
          mismatch(ea.key, "dtype", std::string(dcp::dtype_name(ea.dtype)), std::string(dcp::dtype_name(eb->dtype))));
    } else if (ea.tensor && ea.shape != eb->shape) {
      differences.push_back(mismatch(ea.key, "shape", shape_text(ea.shape), shape_text(eb->shape)));
    } else if (ea.tensor) {
      tensors.push_back(ea.key);
    } else {
      auto ja = a.object_json(ea.key), jb = b.object_json(ea.key);
      const std::string ta = ja ? ja.value() : "(no JSON form: " + ja.error().message() + ")";
      const std::string tb = jb ? jb.value() : "(no JSON form: " + jb.error().message() + ")";
      if (!ja || !jb || ta != tb) differences.push_back(mismatch(ea.key, "object", ta, tb));
    }
  }
  for (const auto& eb : b.entries())
    if (selected(eb.key) && !a.find(eb.key)) only_b.push_back(eb.key);
  for (auto& [key, values] : compare_tensors(a, b, tensors, tol, options.read.threads)) {
    const SourceEntry* e = a.find(key);
    Difference d = mismatch(key, "values", "", "");
    d.values = values;
    d.entry = e;
    d.float_values = has_float64_values(e->dtype);
    differences.push_back(std::move(d));
  }
  // In A's order (values differences were found in batches).
  std::map<std::string, std::size_t> order;
  for (std::size_t i = 0; i < a.entries().size(); ++i) order.emplace(a.entries()[i].key, i);
  std::stable_sort(differences.begin(), differences.end(),
                   [&](const Difference& x, const Difference& y) { return order.at(x.key) < order.at(y.key); });
  const bool same = only_a.empty() && only_b.empty() && differences.empty();

  if (args.has("json")) {
    dcp::json::JsonWriter w;
    w.begin_object().key("same").value(same).key("compared").value(static_cast<std::uint64_t>(compared));
    w.key("only_in_a").begin_array();
    for (const auto& k : only_a) w.value(k);
    w.end_array().key("only_in_b").begin_array();
    for (const auto& k : only_b) w.value(k);
    w.end_array().key("differences").begin_array();
    for (const auto& d : differences) {
      w.begin_object().key("key").value(d.key).key("what").value(d.what);
      if (d.values) {
        w.key("elements").value(dcp::metadata::numel(d.entry->shape)).key("count").value(d.values->count);
        if (d.float_values) w.key("max_abs").value(d.values->max_abs).key("max_rel").value(d.values->max_rel);
        else w.key("max_abs").null().key("max_rel").null();
        w.key("first_index").int_array(unravel(d.values->first, d.entry->shape));
      } else {
        w.key("a").value(d.a).key("b").value(d.b);
      }
      w.end_object();
    }
    w.end_array().end_object();
    std::printf("%s\n", w.str().c_str());
    return same ? 0 : 1;
  }
  for (const auto& k : only_a) std::printf("only in A: %s\n", dcp::escape_text(k).c_str());
  for (const auto& k : only_b) std::printf("only in B: %s\n", dcp::escape_text(k).c_str());
  for (const auto& d : differences) {
    const std::string key = dcp::escape_text(d.key);
    if (!d.values) {
      std::printf("%s: %s differs: %s vs %s\n", key.c_str(), d.what.c_str(),
                  dcp::escape_text(d.a, dcp::Escape::message).c_str(), dcp::escape_text(d.b, dcp::Escape::message).c_str());
      continue;
    }
    std::string line = std::to_string(d.values->count) + " of " +
                       std::to_string(dcp::metadata::numel(d.entry->shape)) + " elements differ";
    if (d.float_values) line += ", max abs " + number(d.values->max_abs) + ", max rel " + number(d.values->max_rel);
    line += ", first at " + shape_text(unravel(d.values->first, d.entry->shape));
    std::printf("%s: %s\n", key.c_str(), line.c_str());
  }
  std::printf("%s: %zu keys compared, %zu differ, %zu only in A, %zu only in B\n", same ? "same" : "different",
              compared, differences.size(), only_a.size(), only_b.size());
  return same ? 0 : 1;
}

}  // namespace dcpp_cli
