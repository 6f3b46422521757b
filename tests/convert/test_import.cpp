// `dcpp convert FILE.pt|FILE.safetensors CKPT_DIR` and dcp.checkpoint's importers: files that
// torch 2.13, torch 1.13 and the safetensors library write are converted and loaded back by
// torch's own DCP loaders (check_import.py); hand-made hostile files are refused with one
// line naming the file, key and byte, leaving no output behind.
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "import_files.hpp"
#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;
import dcp.storage;
import dcp.checkpoint;

namespace fs = std::filesystem;
using namespace dcp_import_files;
using dcp_test::needs_python2x;
using dcp_test::quote;

namespace {

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

void check_script(const std::string& interpreter, const std::string& args) {
  int status = 0;
  const auto out = dcp_test::run_capture(quote(interpreter) + " " +
                                             quote(dcp_test::source_root() / "tests/convert/check_import.py") + " " + args +
                                             " 2>&1",
                                         &status);
  BOOST_TEST_MESSAGE(out);
  BOOST_TEST(status == 0, args << " -> " << out);
  BOOST_TEST(!contains(out, ": FAIL: "), out);
}

dcp_test::CliResult convert(const std::string& args, const fs::path& scratch) {
  return dcp_test::run_dcpp("convert --quiet " + args, scratch);
}

// A failed conversion: exit 1, one line on stderr naming the input, nothing on stdout.
void check_refused(const dcp_test::CliResult& r, const fs::path& input, std::string_view what) {
  BOOST_TEST(r.status == 1, r.err);
  BOOST_TEST(r.out.empty(), r.out);
  BOOST_TEST(r.err.starts_with("dcpp: error: " + input.string() + ": "), r.err);
  BOOST_TEST(r.err.find('\n') == r.err.size() - 1, r.err);
  BOOST_TEST(contains(r.err, what), r.err << " lacks " << what);
}

dcp::Error import_error(const fs::path& file, const dcp::checkpoint::ImportOptions& options = {}) {
  return dcp_test::thrown<dcp::Error>([&] { (void)dcp::checkpoint::import_file(file, options); });
}

// Bytes of the files of a checkpoint directory.
std::uint64_t directory_bytes(const fs::path& dir) {
  std::uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir)) total += e.file_size();
  return total;
}

// What converting `file` with `ranks` ranks writes, next to what its import charged.
std::pair<std::uint64_t, std::uint64_t> written_and_charged(const fs::path& file, int ranks, const fs::path& out) {
  dcp::checkpoint::ImportOptions options;
  options.ranks = ranks;
  const auto imported = dcp::checkpoint::import_file(file, options);
  dcp::storage::WriteOptions write;
  write.sync_files = false;
  (void)dcp::checkpoint::save_as_checkpoint(imported, out, write);
  return {directory_bytes(out), imported.output_bytes};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(import)

BOOST_AUTO_TEST_CASE(torch_2_13_files_load_back_with_dcp_load, *boost::unit_test::precondition(needs_python2x)) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  check_script(dcp_test::python2x(), "make " + quote(d));
  for (const auto& [args, out] : std::vector<std::pair<std::string, std::string>>{
           {"--ranks 1 " + quote(d / "x.pt"), "ck1"},
           {"--ranks 3 " + quote(d / "x.pt"), "ck3"},
           {quote(d / "x.safetensors"), "cks"}}) {
    const auto r = convert(args + " " + quote(d / out), d);
    BOOST_TEST_REQUIRE(r.status == 0, args << ": " << r.err);
  }
  // What an import charges bounds what its conversion writes.
  for (const auto& [file, ranks] : {std::pair{d / "x.pt", 1}, std::pair{d / "x.pt", 3}, std::pair{d / "x.safetensors", 1}}) {
    const auto [written, charged] =
        written_and_charged(file, ranks, d / ("budget-" + file.filename().string() + "-" + std::to_string(ranks)));
    BOOST_TEST(written <= charged, file << " on " << ranks << " ranks");
  }
  // Round trip: the checkpoint back to one torch.save file.
  BOOST_TEST_REQUIRE(convert(quote(d / "ck1") + " " + quote(d / "y.pt"), d).status == 0);
  check_script(dcp_test::python2x(), "load " + quote(d / "x.pt") + " " + quote(d / "ck1") + " " + quote(d / "ck3"));
  check_script(dcp_test::python2x(), "load " + quote(d / "x.safetensors") + " " + quote(d / "cks"));
  check_script(dcp_test::python2x(), "same " + quote(d / "x.pt") + " " + quote(d / "y.pt"));

  // Three ranks: rows split as torch.chunk (5 rows: 2, 2, 1), objects and 0-dim on rank 0.
  const auto md = dcp::checkpoint::inspect(d / "ck3");
  const auto* weight = md->find_item("model.linear.weight");
  BOOST_TEST_REQUIRE(weight);
  BOOST_TEST(weight->tensor().chunks.size() == 3u);
  BOOST_TEST(fs::exists(d / "ck3" / "__2_0.distcp"));
  BOOST_TEST(md->find_item("scalar")->tensor().chunks.size() == 1u);
  // Paths as torch flattens them: list indices are ints, the int dict key became "3".
  const auto* path = md->find_path("layers.1");
  BOOST_TEST_REQUIRE(path);
  BOOST_TEST(path->size() == 2u);
  BOOST_TEST(std::holds_alternative<std::int64_t>((*path)[1]));
  BOOST_TEST(md->find_item("3"));
  BOOST_TEST(md->find_item("ints"));  // a list without tensors is one object
  // safetensors keys stay one part, dots and all.
  const auto mds = dcp::checkpoint::inspect(d / "cks");
  BOOST_TEST_REQUIRE(mds->find_path("layer.0.bias"));
  BOOST_TEST(mds->find_path("layer.0.bias")->size() == 1u);
}

BOOST_AUTO_TEST_CASE(torch_1_13_file_to_a_torch_1_13_checkpoint) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  check_script(dcp_test::python(), "make113 " + quote(d));
  const auto r = convert("--format torch1.13 " + quote(d / "x113.pt") + " " + quote(d / "ck"), d);
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  const auto md = dcp::checkpoint::inspect(d / "ck");
  BOOST_TEST((md->flavor == dcp::metadata::Flavor::torch_1_13));
  BOOST_TEST_REQUIRE(md->find_item("nested"));  // 1.13 keeps top-level keys: a dict is one object
  BOOST_TEST(!md->find_item("nested")->is_tensor());
  BOOST_TEST(!md->find_item("nested.b"));
  check_script(dcp_test::python(), "load113 " + quote(d / "x113.pt") + " " + quote(d / "ck"));
}

BOOST_AUTO_TEST_CASE(output_budget_charges_what_the_conversion_writes) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  // Where the overheads are all there is: empty tensors, small objects, 3-row tensors on 4
  // ranks (3 items each). The charge bounds the output, and not by much.
  std::string header = "{";
  for (int i = 0; i < 2000; ++i)
    header += (i ? "," : "") + std::string("\"empty.") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]}";
  write_safetensors(d / "empty.safetensors", header + "}", 0);
  header = "{";
  for (int i = 0; i < 500; ++i)
    header += (i ? "," : "") + std::string("\"rows.") + std::to_string(i) + "\":{\"dtype\":\"I64\",\"shape\":[3,2],\"data_offsets\":[" +
              std::to_string(48 * i) + "," + std::to_string(48 * (i + 1)) + "]}";
  write_safetensors(d / "rows.safetensors", header + "}", 48 * 500);
  write_pt(d / "objects.pt", tensor_dict_pickle(4, 0, 4, 1, [](dcp::pickle::Encoder& e) {
             for (int i = 0; i < 2000; ++i) {
               e.string("object_" + std::to_string(i));
               e.integer(i);
             }
           }), 16);
  for (const auto& [file, ranks] : {std::pair{d / "empty.safetensors", 1}, std::pair{d / "rows.safetensors", 4},
                                    std::pair{d / "objects.pt", 1}}) {
    BOOST_TEST_CONTEXT(file.filename() << " on " << ranks << " ranks") {
      const auto [written, charged] = written_and_charged(file, ranks, d / ("out-" + file.stem().string()));
      BOOST_TEST(written <= charged);
      BOOST_TEST(charged <= written + written / 2);
    }
  }

  // A stride-0 view of one element is charged its million elements, before anything is read.
  const auto view = d / "view.pt";
  write_pt(view, tensor_dict_pickle(1, 0, 1 << 20, 0), 4);
  const auto imported = dcp::checkpoint::import_file(view);
  BOOST_TEST(imported.output_bytes > 4u << 20);
  BOOST_TEST(imported.options.max_output_bytes == 2 * fs::file_size(view) + (1u << 30));
  dcp::checkpoint::ImportOptions tight;
  tight.max_output_bytes = 4u << 20;
  const auto e = import_error(view, tight);
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == "w");
  BOOST_TEST(e.context().file == view.string());
  BOOST_TEST(e.context().byte_offset.has_value());
  BOOST_TEST(contains(e.message(), "more than 4194304 bytes (the limit given"), e.what());
  // The same file with a limit just large enough, and with more ranks (more items).
  tight.max_output_bytes = imported.output_bytes;
  BOOST_TEST(dcp::checkpoint::import_file(view, tight).output_bytes == imported.output_bytes);
  tight.ranks = 8;
  BOOST_TEST((import_error(view, tight).code() == dcp::Errc::resource_exhausted));
}

BOOST_AUTO_TEST_CASE(summary_line_and_progress) {
  dcp_test::TempDir dir;
  write_good_pt(dir.path() / "m.pt");
  const auto r = dcp_test::run_dcpp("convert --ranks 2 " + quote(dir.path() / "m.pt") + " " + quote(dir.path() / "ck"), dir.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(r.out.starts_with("converted 1 tensors (16 bytes) and 0 objects from "), r.out);
  BOOST_TEST(contains(r.out, "(torch-2.x, 2 ranks)"), r.out);

  const auto imported = dcp::checkpoint::import_torch_save(dir.path() / "m.pt");
  dcp::storage::WriteOptions options;
  std::uint64_t reported = 0;
  options.progress = [&](std::uint64_t bytes) { reported += bytes; };
  options.files_per_rank = 1;
  const auto report = dcp::checkpoint::save_as_checkpoint(imported, dir.path() / "ck2", options);
  BOOST_TEST(report.tensors == 1u);
  BOOST_TEST(report.bytes == 16u);
  BOOST_TEST(reported == 16u);
}

// --overwrite replaces a checkpoint and nothing else: the user's files in the directory stay,
// and a directory holding only such files takes a checkpoint beside them.
BOOST_AUTO_TEST_CASE(overwrite_replaces_only_a_checkpoint) {
  dcp_test::TempDir dir;
  const auto pt = dir.path() / "m.pt";
  write_good_pt(pt);
  const auto out = dir.path() / "ck";
  BOOST_TEST_REQUIRE(convert(quote(pt) + " " + quote(out), dir.path()).status == 0);
  auto r = convert(quote(pt) + " " + quote(out), dir.path());
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, out.string()), r.err);
  BOOST_TEST(contains(r.err, "--overwrite"), r.err);
  dcp_test::write_bytes(out / "notes.txt", {std::byte{'x'}});
  r = convert("--overwrite --ranks 2 " + quote(pt) + " " + quote(out), dir.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(fs::exists(out / "__1_g1_0.distcp"));
  BOOST_TEST(!fs::exists(out / "__0_0.distcp"));
  BOOST_TEST(fs::exists(out / "notes.txt"));

  const auto other = dir.path() / "other";
  fs::create_directory(other);
  dcp_test::write_bytes(other / "notes.txt", {std::byte{'x'}});
  r = convert(quote(pt) + " " + quote(other), dir.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(fs::exists(other / "notes.txt"));
  BOOST_TEST(fs::exists(other / ".metadata"));
}

BOOST_AUTO_TEST_CASE(usage_errors_exit_2_before_any_io) {
  dcp_test::TempDir dir;
  const auto pt = quote(dir.path() / "m.pt");  // not even there: usage comes first
  const auto out = quote(dir.path() / "out");
  for (const std::string& args : {"--ranks 0 " + pt + " " + out, "--ranks x " + pt + " " + out, "--ranks 5000 " + pt + " " + out,
                                  "--format torch3 " + pt + " " + out, "--keys w " + pt + " " + out,
                                  "--threads 2 " + pt + " " + out, "--ranks 2 " + out + " " + pt,
                                  "--overwrite " + out + " " + dir.path().string() + "/m.txt", "--max-output-bytes 0 " + pt + " " + out,
                                  "--max-output-bytes x " + pt + " " + out, "--max-output-bytes -5 " + pt + " " + out,
                                  "--max-output-bytes 5Q " + pt + " " + out, "--max-output-bytes 99999999999T " + pt + " " + out,
                                  "--max-output-bytes 1G " + out + " " + pt}) {
    const auto r = dcp_test::run_dcpp("convert " + args, dir.path());
    BOOST_TEST(r.status == 2, args << ": " << r.err);
    BOOST_TEST(r.err.starts_with("dcpp: error: "), r.err);
  }
  BOOST_TEST(fs::is_empty(dir.path()));
  const auto help = dcp_test::run_dcpp("convert --help", dir.path());
  BOOST_TEST(contains(help.out, "--ranks N"), help.out);
  BOOST_TEST(contains(help.out, "--format KIND"), help.out);
  BOOST_TEST(contains(help.out, "--overwrite"), help.out);
  BOOST_TEST(contains(help.out, "--max-output-bytes SIZE"), help.out);
}

BOOST_AUTO_TEST_CASE(hostile_torch_save_files_are_refused_leaving_nothing) {
  dcp_test::TempDir dir;
  const auto out = dir.path() / "out";
  struct Case {
    std::string name, expect;
    std::vector<std::byte> bytes;
  };
  std::vector<Case> cases;
  auto add = [&](std::string name, std::string expect, auto write) {
    const auto path = dir.path() / name;
    write(path);
    cases.push_back({std::move(name), std::move(expect), dcp_test::read_bytes(path)});
  };
  add("view_outside.pt", "key 'w': byte ", [](const fs::path& p) { write_pt(p, tensor_dict_pickle(4, 2, 3, 1), 16); });
  add("stride_outside.pt", "view reaches element 6", [](const fs::path& p) { write_pt(p, tensor_dict_pickle(4, 0, 3, 3), 16); });
  add("size_mismatch.pt", "holds 12 bytes", [](const fs::path& p) { write_pt(p, tensor_dict_pickle(4, 0, 3, 1), 12); });
  add("foreign_global.pt", "os.system", [](const fs::path& p) {
    write_pt(p, tensor_dict_pickle(4, 0, 4, 1, [](dcp::pickle::Encoder& e) {
      e.string("evil");
      e.global("os", "system");
      e.string("touch /tmp/pwned");
      e.tuple(1);
      e.reduce();
    }), 16);
  });
  add("tuple_with_tensor.pt", "holds a tensor", [](const fs::path& p) { write_pt(p, tensor_dict_pickle(4, 0, 4, 1, nullptr, true), 16); });
  add("big_endian.pt", "big-endian", [](const fs::path& p) { write_pt(p, tensor_dict_pickle(4, 0, 4, 1), 16, "big"); });
  add("truncated.pt", "dcpp: error: ", [](const fs::path& p) {
    write_good_pt(p);
    fs::resize_file(p, fs::file_size(p) / 2);
  });
  add("corrupt_data.pt", "crc32 of the data", [](const fs::path& p) {
    write_good_pt(p);
    auto bytes = dcp_test::read_bytes(p);
    const auto archive = dcp::zip::parse_archive(bytes);
    const auto data = dcp::zip::record_data(archive, bytes, "data/0");
    bytes[static_cast<std::size_t>(data.data() - bytes.data()) + 3] ^= std::byte{1};
    dcp_test::write_bytes(p, bytes);
  });
  add("legacy.pt", "legacy (non-zip)", [](const fs::path& p) {
    dcp_test::write_bytes(p, {std::byte{0x80}, std::byte{0x02}, std::byte{0x8a}, std::byte{0x0a}});
  });
  add("not_a_dict.pt", "not a dict", [](const fs::path& p) {
    dcp::pickle::Encoder e(2);
    e.integer(5);
    write_pt(p, e.finish(), 16);
  });
  add("empty.pt", "not a torch.save zip archive", [](const fs::path& p) { dcp_test::write_bytes(p, {}); });
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT(c.name) {
      const auto r = convert(quote(dir.path() / c.name) + " " + quote(out), dir.path());
      check_refused(r, dir.path() / c.name, c.expect);
      BOOST_TEST(!fs::exists(out));
    }
  }
  BOOST_TEST(!fs::exists("/tmp/pwned"));
  {  // {'a': <itself>}
    dcp::pickle::Encoder e(2);
    e.empty_dict();
    (void)e.put();
    e.string("a");
    e.get(0);
    e.setitem();
    write_pt(dir.path() / "self.pt", e.finish(), 16);
    const auto err = import_error(dir.path() / "self.pt");
    BOOST_TEST(contains(err.what(), "contains itself"), err.what());
  }
  {  // d[k] = {'a': d[k-1], 'b': d[k-1]}: 2^40 leaves from a few hundred bytes, by memo.
    dcp::pickle::Encoder e(2);
    e.empty_dict();
    e.string("x");
    e.integer(1);
    e.setitem();
    std::uint32_t prev = e.put();
    for (int k = 0; k < 40; ++k) {
      e.pop();
      e.empty_dict();
      e.mark();
      e.string("a");
      e.get(prev);
      e.string("b");
      e.get(prev);
      e.setitems_from_mark();
      prev = e.put();
    }
    write_pt(dir.path() / "dag.pt", e.finish(), 16);
    const auto err = import_error(dir.path() / "dag.pt");
    BOOST_TEST((err.code() == dcp::Errc::resource_exhausted), err.what());
  }
  // Codes and offsets, through the API.
  BOOST_TEST((import_error(dir.path() / "foreign_global.pt").code() == dcp::Errc::permission_denied));
  BOOST_TEST((import_error(dir.path() / "legacy.pt").code() == dcp::Errc::unimplemented));
  const auto view = import_error(dir.path() / "view_outside.pt");
  BOOST_TEST((view.code() == dcp::Errc::data_loss));
  BOOST_TEST(view.context().key == "w");
  BOOST_TEST(view.context().byte_offset.has_value());
  const auto tuple = import_error(dir.path() / "tuple_with_tensor.pt");
  BOOST_TEST((tuple.code() == dcp::Errc::unimplemented));
  BOOST_TEST(tuple.context().key == "w");
}

BOOST_AUTO_TEST_CASE(hostile_safetensors_files_are_refused) {
  dcp_test::TempDir dir;
  const auto st = [&](const std::string& name) { return dir.path() / (name + ".safetensors"); };
  write_safetensors(st("good"), R"( {"__metadata__":{"format":"pt","x":[1,{"y":null}]},"a.b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                                      "\u00e9\ud83d\ude00\n" : {"shape":[], "data_offsets":[8,9], "dtype":"I8"}} )", 9);
  const auto good = dcp::checkpoint::import_file(st("good"));
  BOOST_TEST(good.state_dict.size() == 2u);
  BOOST_TEST(good.state_dict.find("a.b"));
  BOOST_TEST(good.state_dict.find("\xc3\xa9\xf0\x9f\x98\x80\n"));  // é😀 and a newline, unescaped

  struct Case {
    std::string name, header, expect;
    std::size_t data = 8;
    std::optional<std::uint64_t> claimed = std::nullopt;
  };
  const std::vector<Case> cases = {
      {"length_past_file", "{}", "exceeds the file", 0, 1000},  // the rest: data 8, length as written
      {"length_past_limit", "{}", "100 MB", 0, std::uint64_t{1} << 40},
      {"out_of_range", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "outside the data section"},
      {"overlap", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", "overlap"},
      {"wrong_size", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "needs 12"},
      {"reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", "outside the data section"},
      {"bad_dtype", R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", "'F4'"},
      {"duplicate", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "twice"},
      {"trailing_comma", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},})", "JSON"},
      {"huge_dim", R"({"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}})", "64 bits"},
      {"deep", R"({"__metadata__":)" + std::string(100, '[') + std::string(100, ']') + "}", "JSON nested deeper"},
      {"missing_field", R"({"a":{"dtype":"F32","shape":[1]}})", "lacks"},
  };
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT(c.name) {
      write_safetensors(st(c.name), c.header, c.data, c.claimed);
      const auto e = import_error(st(c.name));
      BOOST_TEST(contains(e.what(), c.expect), e.what());
      BOOST_TEST(e.context().file == st(c.name).string());
      BOOST_TEST(e.context().byte_offset.has_value(), e.what());
    }
  }
  // And through the CLI: one line, nothing written.
  const auto r = convert(quote(st("overlap")) + " " + quote(dir.path() / "out"), dir.path());
  check_refused(r, st("overlap"), "key 'b'");
  BOOST_TEST(!fs::exists(dir.path() / "out"));
}

BOOST_AUTO_TEST_SUITE_END()

// `convert --ranks 512` plays 512 ranks in one process: only the coordinator holds the final
// metadata (51,200 chunks: 100 tensors of 1024 rows, 2 rows a rank), so memory stays that of
// one metadata, not 512 decoded copies, and the run takes seconds (on the 2-core development VM
// 1.9 s and 130 MiB; before, 257 s and 12.1 GiB). Peak RSS from /usr/bin/time; torch 2.13
// loads the result.
BOOST_AUTO_TEST_CASE(many_played_ranks_keep_memory_small, *boost::unit_test::precondition(needs_python2x)) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  int status = 0;
  const auto made = dcp_test::run_capture(
      quote(dcp_test::python2x()) + " -c \"import torch; torch.manual_seed(0); torch.save({'t%d' % i: torch.randn(1024, 1) "
                                    "for i in range(100)}, '" + (d / "x.pt").string() + "')\" 2>&1",
      &status);
  BOOST_TEST_REQUIRE(status == 0, made);
  const auto start = std::chrono::steady_clock::now();
  const auto err = d / "time.txt";
  // Without meson's MALLOC_PERTURB_, which fills every malloc'd buffer (each rank's write
  // buffer, untouched past what it writes) and so makes them all resident.
  const auto out = dcp_test::run_capture("env -u MALLOC_PERTURB_ /usr/bin/time -f %M -o " + quote(err) + " " +
                                             quote(dcp_test::dcpp_exe()) +
                                             " convert --quiet --ranks 512 " + quote(d / "x.pt") + " " + quote(d / "ck") +
                                             " 2>&1",
                                         &status);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST_REQUIRE(status == 0, out);
  const auto peak_kib = std::stoull(dcp_test::run_capture("tail -n 1 " + quote(err)));
  BOOST_TEST_MESSAGE("convert --ranks 512: " << seconds << " s, peak RSS " << peak_kib / 1024 << " MiB");
  BOOST_TEST(peak_kib < 1024u * 1024, "peak RSS " << peak_kib << " KiB");
  BOOST_TEST(seconds < 60);
  BOOST_TEST(fs::exists(d / "ck" / ".metadata"));
  check_script(dcp_test::python2x(), "load " + quote(d / "x.pt") + " " + quote(d / "ck"));
}
