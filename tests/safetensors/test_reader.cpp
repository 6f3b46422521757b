// dcp.safetensors: what the safetensors library and torch 2.13's HuggingFaceStorageWriter wrote
// (tests/python/make_hf.py, at test time), read through the library: the layout found, every
// key, dtype and shape, every byte; boxes of rows, columns and a 2x2 grid on ranks played by
// threads, read-once on, each rank checking its metadata from rank 0's headers.
#define BOOST_TEST_MODULE dcp.safetensors
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../support/support.hpp"

import dcp.error;
import dcp.metadata;
import dcp.layout;
import dcp.planning;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;
import dcp.safetensors;

namespace md = dcp::metadata;
namespace pl = dcp::planning;
namespace st = dcp::storage;
namespace ck = dcp::checkpoint;
namespace ly = dcp::layout;
namespace json = boost::json;
using dcp_test::needs_python2x;

namespace {

json::object expected_of(const std::filesystem::path& case_dir) {
  return dcp_test::read_json(case_dir / "expected.json").as_object();
}

md::Shape shape_of(const json::value& v) {
  md::Shape s;
  for (const auto& d : v.as_array()) s.push_back(d.to_number<std::int64_t>());
  return s;
}

std::vector<std::byte> bin_of(const std::filesystem::path& case_dir, const json::object& tensor) {
  return dcp_test::read_bytes(case_dir / std::string(tensor.at("file").as_string()));
}

// The bytes of `box` of a row-major tensor of `sizes` (elements of `itemsize` bytes).
std::vector<std::byte> box_bytes(const std::vector<std::byte>& full, const md::Shape& sizes, const ly::Box& box,
                                 std::size_t itemsize) {
  std::vector<std::byte> out;
  if (ly::volume(box) == 0) return out;
  const auto strides = ly::contiguous_strides(sizes);
  md::Shape index(sizes.size(), 0);
  while (true) {
    std::int64_t at = 0;
    for (std::size_t d = 0; d < sizes.size(); ++d) at += (box.offsets[d] + index[d]) * strides[d];
    const auto* p = full.data() + static_cast<std::size_t>(at) * itemsize;
    out.insert(out.end(), p, p + itemsize);
    std::size_t d = sizes.size();
    while (d > 0 && ++index[d - 1] == box.sizes[d - 1]) index[--d] = 0;
    if (d == 0) break;
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(reader, *boost::unit_test::precondition(needs_python2x))

// Each case's layout is recognised and read exactly: keys, dtypes and shapes as written, and
// every byte of every tensor as the independent reader of make_hf.py (the format's spec,
// load_file, torch's HuggingFaceStorageReader) found it.
BOOST_AUTO_TEST_CASE(every_case_reads_exactly) {
  for (const auto& name : dcp_test::hf_cases())
    BOOST_TEST_CONTEXT(name) {
      const auto& dir = dcp_test::hf_case(name);
      const auto expected = expected_of(dir);
      const auto path = dcp_test::hf_case_path(dir);
      const auto metadata = ck::inspect(path);
      BOOST_TEST(md::source_name(metadata->source) == std::string(expected.at("source").as_string()));
      BOOST_TEST(!metadata->planner_data.has_value());
      const auto& tensors = expected.at("tensors").as_object();
      BOOST_TEST(metadata->items.size() == tensors.size());
      for (const auto& item : metadata->items) {
        BOOST_TEST_REQUIRE(tensors.contains(item.fqn), item.fqn);
        const auto& want = tensors.at(item.fqn).as_object();
        BOOST_TEST(dcp::dtype_name(item.tensor().properties.dtype) == std::string(want.at("dtype").as_string()), item.fqn);
        BOOST_TEST((item.tensor().size == shape_of(want.at("shape"))), item.fqn);
      }
      std::size_t seen = 0;
      (void)ck::for_each_tensor(path, metadata, {}, [&](const std::string& fqn, ck::TensorBuffer t) {
        const auto want = bin_of(dir, tensors.at(fqn).as_object());
        const auto got = t.bytes();
        BOOST_TEST((std::vector<std::byte>(got.begin(), got.end()) == want), fqn);
        ++seen;
      });
      BOOST_TEST(seen == tensors.size());
    }
}

// Every tensor of a model directory, a one-process torch save and torch's rank files, split on
// 4 ranks played by threads into rows, columns and a 2x2 grid (a tensor without the dim by
// rows, a scalar whole): each rank gets exactly its box. Rank 0 reads the headers and sends
// them; read-once shares what several ranks read.
BOOST_AUTO_TEST_CASE(rows_columns_and_a_grid_on_four_ranks) {
  constexpr int kWorld = 4;
  for (const std::string name : {"st_repo", "hf_1proc", "hf_4ranks", "hf_4ranks_cons_sharded"})
    for (const std::string layout : {"rows", "cols", "2d:2x2"})
      BOOST_TEST_CONTEXT(name << " " << layout) {
        const auto& dir = dcp_test::hf_case(name);
        const auto expected = expected_of(dir);
        const auto path = dcp_test::hf_case_path(dir);
        const auto wanted = ly::parse_layout(layout, kWorld), by_rows = ly::parse_layout("rows", kWorld);
        auto groups = dcp::collective::make_in_process_group(kWorld);
        std::vector<std::map<std::string, std::pair<ly::Box, std::vector<std::byte>>>> got(kWorld);
        std::vector<std::optional<dcp::Error>> errors(kWorld);
        std::vector<std::thread> threads;
        for (int r = 0; r < kWorld; ++r)
          threads.emplace_back([&, r] {
            try {
              auto reader = st::open_reader(path);
              const auto metadata = ck::read_metadata(*reader, groups[static_cast<std::size_t>(r)].get());
              pl::Destination destination;
              for (const auto& item : metadata->items) {
                const auto& t = item.tensor();
                const auto box = ly::local_box(t.size, t.size.size() >= 2 ? wanted : by_rows, r);
                auto& [where, memory] = got[static_cast<std::size_t>(r)][item.fqn];
                where = box;
                memory.resize(static_cast<std::size_t>(ly::volume(box)) * dcp::dtype_itemsize(t.properties.dtype));
                pl::TensorDestination dest{t.size, t.properties.dtype, {}};
                dest.chunks.push_back({box.offsets, box.sizes, pl::contiguous_slice(memory.data(), t.properties.dtype, box.sizes)});
                destination.add_tensor(item.fqn, std::move(dest));
              }
              pl::DefaultLoadPlanner planner;
              (void)ck::load(destination, *reader, planner, metadata, groups[static_cast<std::size_t>(r)].get());
            } catch (const dcp::Error& e) {
              errors[static_cast<std::size_t>(r)] = e;
            }
          });
        for (auto& t : threads) t.join();
        for (int r = 0; r < kWorld; ++r) {
          const auto& error = errors[static_cast<std::size_t>(r)];
          BOOST_TEST_REQUIRE(!error.has_value(), (error ? error->what() : ""));
          for (const auto& [fqn, value] : got[static_cast<std::size_t>(r)]) {
            const auto& want = expected.at("tensors").at(fqn).as_object();
            const auto dtype = *dcp::dtype_from_name(std::string(want.at("dtype").as_string()));
            const auto full = bin_of(dir, want);
            BOOST_TEST((value.second == box_bytes(full, shape_of(want.at("shape")), value.first, dcp::dtype_itemsize(dtype))),
                       fqn << " on rank " << r);
          }
        }
      }
}

// The codecs write what they read: a header of every dtype code, an index and sharding info.
BOOST_AUTO_TEST_CASE(codecs_read_what_they_write) {
  namespace sf = dcp::safetensors;
  std::vector<sf::Entry> entries;
  std::uint64_t at = 0;
  for (const auto& info : dcp::dtype_table()) {
    if (info.safetensors.empty()) continue;
    const auto bytes = 3 * info.itemsize;
    entries.push_back({"t." + std::string(info.name), info.dtype, {3}, at, at + bytes, 0});
    at += bytes;
  }
  const std::vector<std::pair<std::string, std::string>> strings{{"format", "pt"}, {"note", "\"quoted\" \u00e9"}};
  const auto whole = sf::encode_header(entries, strings);
  BOOST_TEST(whole.size() % 8 == 0u);
  const auto* prefix = reinterpret_cast<const std::byte*>(whole.data());
  const auto length = sf::header_length(std::span(prefix, 8), whole.size() + at);
  const auto header = sf::parse_header(std::string_view(whole).substr(8, length), whole.size() + at);
  BOOST_TEST(header.entries.size() == entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    BOOST_TEST(header.entries[i].key == entries[i].key);
    BOOST_TEST((header.entries[i].dtype == entries[i].dtype));
    BOOST_TEST(header.entries[i].begin == entries[i].begin);
  }
  BOOST_TEST(*header.find_metadata("note") == strings[1].second);

  const auto index = sf::parse_index(sf::encode_index(42, std::vector<std::pair<std::string, std::string>>{
                                                              {"a", "model-00001-of-00002.safetensors"},
                                                              {"b", "model-00002-of-00002.safetensors"}}));
  BOOST_TEST(*index.total_size == 42u);
  BOOST_TEST(index.weight_map.size() == 2u);
  BOOST_TEST(sf::index_files(index).size() == 2u);

  const std::vector<std::pair<std::string, md::Shape>> offsets{{"w", {4, 0}}, {"s", {}}};
  const auto text = sf::encode_sharding_info(offsets);
  BOOST_TEST(text == R"({"w": {"saved_offsets": [4, 0]}, "s": {"saved_offsets": []}})");
  BOOST_TEST((sf::parse_sharding_info(text) == offsets));
}

BOOST_AUTO_TEST_SUITE_END()
