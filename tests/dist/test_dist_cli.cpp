// dcp.dist: `dcpp load` and `dcpp reshard` as the ranks of a launcher (dcpp execs dcpp-torch,
// which forms the Gloo group from the environment), of DCP and safetensors checkpoints, checked
// by torch 2.13 (1, 2 and 4 Gloo ranks) and torch 1.13 (one process).
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "launcher.hpp"
#include "support.hpp"

namespace {

using dcp_test::TempDir;
namespace fs = std::filesystem;
namespace json = boost::json;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// `hosts[r]`, when given, is the host rank r plays (DCPP_HOST).
std::vector<dist_test::RankResult> run_dcpp_ranks(int world, const fs::path& scratch, std::vector<std::string> args,
                                                  std::vector<std::pair<std::string, std::string>> env = {},
                                                  std::vector<std::string> hosts = {}) {
  dist_test::Launch l;
  l.world = world;
  l.scratch = scratch;
  l.env = std::move(env);
  l.argv = [&](int rank) {
    std::vector<std::string> argv{dcp_test::dcpp_exe().string()};
    if (!hosts.empty()) argv.insert(argv.begin(), {"/usr/bin/env", "DCPP_HOST=" + hosts.at(static_cast<std::size_t>(rank))});
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  return dist_test::launch(l);
}

// save_check.py's MANIFEST entry for every value of a case (tests/python/README.md): tensors
// with their expected bytes, objects with their Python literal.
json::object manifest_entry(const std::string& name, const fs::path& ckpt, const fs::path& case_dir) {
  const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
  json::array tensors, objects;
  for (const auto& [fqn, t] : expected.at("tensors").as_object())
    tensors.push_back(json::object{{"path", t.at("path")},
                                   {"dtype", t.at("dtype")},
                                   {"shape", t.at("shape")},
                                   {"bin", (case_dir / std::string(t.at("file").as_string())).string()}});
  for (const auto& [fqn, o] : expected.at("objects").as_object())
    objects.push_back(json::object{{"path", o.at("path")}, {"literal", o.at("repr")}});
  return {{"name", name}, {"ckpt", ckpt.string()}, {"exact_keys", true}, {"tensors", tensors}, {"objects", objects}};
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

// Runs a torch oracle over MANIFEST; every check must print "ok".
void check_with_torch(const std::string& python, const std::string& script, const std::string& mode,
                      const fs::path& manifest) {
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::quote(python) + " " +
                                             dcp_test::quote(dcp_test::source_root() / "tests/python" / script) + " " +
                                             mode + " " + dcp_test::quote(manifest) + " 2>&1",
                                         &status);
  BOOST_TEST(status == 0, script << " " << mode << ":\n" << out);
  BOOST_TEST(!contains(out, "FAIL"), out);
  BOOST_TEST(contains(out, "ok "), out);
}

void all_ok(const std::vector<dist_test::RankResult>& results) {
  for (const auto& r : results) BOOST_TEST(r.status == 0, dist_test::describe(results));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cli, *boost::unit_test::precondition(dcp_test::needs_python2x))

BOOST_AUTO_TEST_CASE(load_under_the_launcher_reports_each_rank_and_the_total) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  const auto results = run_dcpp_ranks(3, tmp.path(), {"load", "--json", (case_dir / "ckpt").string()});
  all_ok(results);
  std::uint64_t bytes = 0, storage_bytes = 0;
  json::object total;
  for (std::size_t r = 0; r < results.size(); ++r) {
    const auto doc = json::parse(results[r].out).as_object();
    BOOST_TEST(doc.at("rank").as_int64() == static_cast<std::int64_t>(r));
    BOOST_TEST(doc.at("world_size").as_int64() == 3);
    BOOST_TEST(doc.at("storage_bytes").to_number<std::uint64_t>() > 0u);
    BOOST_TEST(doc.at("objects").as_int64() > 0);
    bytes += doc.at("bytes").to_number<std::uint64_t>();
    storage_bytes += doc.at("storage_bytes").to_number<std::uint64_t>();
    BOOST_TEST((r == 0) == doc.contains("total"), results[r].out);
    if (r == 0) total = doc.at("total").as_object();
  }
  BOOST_TEST(total.at("bytes").to_number<std::uint64_t>() == bytes);
  BOOST_TEST(total.at("storage_bytes").to_number<std::uint64_t>() == storage_bytes);
  BOOST_TEST(total.at("gbps").to_number<double>() > 0);
}

// Four ranks that each load every tensor whole. On this one host (or told so by DCPP_HOST) every
// rank reads for itself, as without read-once: nothing is broadcast, whichever link is the
// slowest. Played as two hosts (DCPP_HOST) with the storage the slowest link, every saved item
// is read from storage by one rank (together at most the data files' bytes) and received by
// the three others.
BOOST_AUTO_TEST_CASE(replicated_load_reads_once_per_host_or_once_across_played_hosts) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  std::uint64_t file_bytes = 0;
  for (const auto& entry : fs::directory_iterator(case_dir / "ckpt"))
    if (entry.path().extension() == ".distcp") file_bytes += entry.file_size();
  auto total_of = [&](std::vector<std::string> flags, std::vector<std::string> hosts) {
    std::vector<std::string> args{"load", "--json", "--layout", "replicated"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back((case_dir / "ckpt").string());
    const auto results = run_dcpp_ranks(4, tmp.path(), args, {}, std::move(hosts));
    all_ok(results);
    return json::parse(results.at(0).out).as_object().at("total").as_object();
  };
  const auto every = total_of({"--no-read-once"}, {});
  const auto tensor_bytes = every.at("bytes").to_number<std::uint64_t>();  // 4 whole copies
  BOOST_TEST(every.at("received_bytes").to_number<std::uint64_t>() == 0u);
  BOOST_TEST(every.at("storage_bytes").to_number<std::uint64_t>() >= tensor_bytes);
  for (const auto& [flags, hosts] : std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
           {{}, {}}, {{"--slowest-link", "storage"}, {}}, {{"--slowest-link", "storage"}, {"n", "n", "n", "n"}}}) {
    BOOST_TEST_CONTEXT(flags.size() << " flags, " << hosts.size() << " hosts given") {
      const auto one_host = total_of(flags, hosts);
      BOOST_TEST(one_host.at("bytes").to_number<std::uint64_t>() == tensor_bytes);
      BOOST_TEST(one_host.at("received_bytes").to_number<std::uint64_t>() == 0u);
      BOOST_TEST(one_host.at("storage_bytes").to_number<std::uint64_t>() >= tensor_bytes);
    }
  }
  const auto once = total_of({"--slowest-link", "storage"}, {"a", "a", "b", "b"});
  BOOST_TEST(once.at("bytes").to_number<std::uint64_t>() == tensor_bytes);
  const auto read = once.at("storage_bytes").to_number<std::uint64_t>();
  BOOST_TEST(read <= file_bytes);
  BOOST_TEST(read >= tensor_bytes / 4);
  BOOST_TEST(once.at("received_bytes").to_number<std::uint64_t>() == 3 * read);
  // The default over the two played hosts: each host reads, nothing travels.
  const auto per_host = total_of({}, {"a", "a", "b", "b"});
  BOOST_TEST(per_host.at("received_bytes").to_number<std::uint64_t>() == 0u);
}

// torch 2.13's torchrun: its agent's store speaks a newer protocol than libtorch 1.13, so rank
// 0 serves dcpp's own (DCPP_STORE_PORT).
BOOST_AUTO_TEST_CASE(load_under_torchrun) {
  const auto& case_dir = dcp_test::checkpoint_case("x2_2d_4ranks");
  const auto torchrun = fs::path(dcp_test::python2x()).parent_path() / "torchrun";
  int status = 0;
  const auto out = dcp_test::run_capture(
      "DCPP_STORE_PORT=" + std::to_string(dist_test::free_port()) + " " + dcp_test::quote(torchrun) +
          " --standalone --nproc-per-node 2 --no-python " + dcp_test::quote(dcp_test::dcpp_exe()) +
          " load --json --timeout 30 " + dcp_test::quote(case_dir / "ckpt") + " 2>/dev/null",
      &status);
  BOOST_TEST(status == 0, out);
  std::size_t ranks = 0;
  for (std::size_t at = 0; (at = out.find("\"world_size\":2", at)) != std::string::npos; ++at) ++ranks;
  BOOST_TEST(ranks == 2u, out);
}

BOOST_AUTO_TEST_CASE(reshard_of_dtensor_checkpoints_loads_in_torch_on_1_2_and_4_ranks) {
  TempDir tmp;
  json::array checks, dist;
  for (const char* name : {"x2_fsdp_4ranks", "x2_2d_4ranks"}) {
    const auto& case_dir = dcp_test::checkpoint_case(name);
    const auto out = tmp.path() / (std::string(name) + "-3ranks");
    const auto results = run_dcpp_ranks(3, tmp.path(), {"reshard", (case_dir / "ckpt").string(), out.string()});
    all_ok(results);
    BOOST_TEST(contains(results[0].out, "3 ranks, rows"), results[0].out);
    for (int r = 0; r < 3; ++r) BOOST_TEST(fs::exists(out / ("__" + std::to_string(r) + "_0.distcp")));
    BOOST_TEST(!fs::exists(out / "__3_0.distcp"));
    checks.push_back(manifest_entry(std::string(name) + "-1proc", out, case_dir));
    for (int world : {2, 4}) {
      auto entry = manifest_entry(std::string(name) + "-" + std::to_string(world) + "ranks", out, case_dir);
      entry["world"] = world;
      dist.push_back(entry);
    }
  }
  const auto manifest = tmp.path() / "manifest.json";
  write_text(manifest, json::serialize(json::object{{"checks", checks}, {"dist", dist}}));
  check_with_torch(dcp_test::python2x(), "save_check.py", "load", manifest);
  check_with_torch(dcp_test::python2x(), "save_check.py", "dist", manifest);
}

// --layout cols on 3 ranks and 2d:2x2 on 4: the saved chunks form that layout (dcpp inspect's
// independent reading of them), and torch 2.13 loads the values in one process.
BOOST_AUTO_TEST_CASE(reshard_into_cols_and_a_2x2_grid) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_2d_4ranks");
  json::array checks;
  const std::tuple<const char*, int, const char*> runs[] = {{"cols", 3, "cols(3)"}, {"2d:2x2", 4, "grid(2x2)"}};
  for (const auto& [layout, world, shown] : runs) {
    const auto out = tmp.path() / (std::string("out-") + std::to_string(world));
    const auto results =
        run_dcpp_ranks(world, tmp.path(), {"reshard", "--layout", layout, (case_dir / "ckpt").string(), out.string()});
    all_ok(results);
    BOOST_TEST(contains(results[0].out, std::string(layout) + ")"), results[0].out);
    const auto inspect = dcp_test::run_dcpp("inspect " + out.string(), tmp.path());
    BOOST_TEST(contains(inspect.out, shown), inspect.out);
    checks.push_back(manifest_entry(std::string("x2_2d_4ranks-") + layout, out, case_dir));
  }
  const auto manifest = tmp.path() / "manifest.json";
  write_text(manifest, json::serialize(json::object{{"checks", checks}}));
  check_with_torch(dcp_test::python2x(), "save_check.py", "load", manifest);
}

// Safetensors checkpoints (a model repository, a one-process torch save, torch's rank files with
// and without consolidation) resharded by dcpp on 2 to 4 Gloo ranks into rows, columns and a 2x2
// grid, each rank reading its byte ranges: torch 2.13 loads exactly the values written, in one
// process and (rows) as DTensors on the ranks that wrote them.
BOOST_AUTO_TEST_CASE(reshard_of_safetensors_checkpoints_on_2_to_4_ranks) {
  TempDir tmp;
  json::array checks, dist;
  const std::tuple<const char*, const char*, int> runs[] = {
      {"st_repo", "rows", 2},      {"hf_1proc", "cols", 3},       {"hf_2ranks", "2d:2x2", 4},
      {"hf_4ranks", "rows", 3},    {"hf_4ranks", "2d:2x2", 4},    {"hf_4ranks_cons", "cols", 2},
      {"hf_4ranks_cons_sharded", "rows", 4}};
  for (const auto& [name, layout, world] : runs) {
    const auto& case_dir = dcp_test::hf_case(name);
    const auto label = std::string(name) + "-" + layout + "-" + std::to_string(world);
    const auto out = tmp.path() / label;
    const auto results = run_dcpp_ranks(
        world, tmp.path(), {"reshard", "--layout", layout, dcp_test::hf_case_path(case_dir).string(), out.string()});
    all_ok(results);
    checks.push_back(manifest_entry(label, out, case_dir));
    if (std::string(layout) == "rows") {
      auto entry = manifest_entry(label + "-dist", out, case_dir);
      entry["world"] = world;
      dist.push_back(entry);
    }
  }
  const auto manifest = tmp.path() / "manifest.json";
  write_text(manifest, json::serialize(json::object{{"checks", checks}, {"dist", dist}}));
  check_with_torch(dcp_test::python2x(), "save_check.py", "load", manifest);
  check_with_torch(dcp_test::python2x(), "save_check.py", "dist", manifest);
}

// --layout replicated on 4 ranks: every rank holds every tensor whole, and the save stores each
// once (torch's de-duplication: the rank with the fewest bytes so far writes it); the writes are
// spread over the ranks, and torch 2.13 loads the result in one process and on 4 ranks.
BOOST_AUTO_TEST_CASE(reshard_replicated_on_4_ranks_stores_each_tensor_once) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  const auto out = tmp.path() / "out";
  const auto results =
      run_dcpp_ranks(4, tmp.path(), {"reshard", "--layout", "replicated", (case_dir / "ckpt").string(), out.string()});
  all_ok(results);
  const auto inspect = dcp_test::run_dcpp("inspect --json " + out.string(), tmp.path());
  const auto doc = json::parse(inspect.out).as_object();
  std::size_t tensors = 0;
  std::set<std::string> files;
  for (const auto& item : doc.at("items").as_array()) {
    const auto& o = item.as_object();
    if (o.at("kind").as_string() != "tensor") continue;
    ++tensors;
    const auto& chunks = o.at("chunks").as_array();
    BOOST_TEST(chunks.size() == 1u, o.at("fqn").as_string());
    for (const auto& c : chunks) files.insert(std::string(c.as_object().at("file").as_string()));
  }
  BOOST_TEST(tensors > 1u);
  BOOST_TEST(files.size() > 1u, "every tensor written by one rank");
  auto entry = manifest_entry("x2_fsdp_4ranks-replicated", out, case_dir);
  json::object dist_entry = entry;
  dist_entry["world"] = 4;
  const auto manifest = tmp.path() / "manifest.json";
  write_text(manifest, json::serialize(json::object{{"checks", json::array{entry}}, {"dist", json::array{dist_entry}}}));
  check_with_torch(dcp_test::python2x(), "save_check.py", "load", manifest);
  check_with_torch(dcp_test::python2x(), "save_check.py", "dist", manifest);
}

BOOST_AUTO_TEST_CASE(reshard_of_a_torch_113_sharded_tensor_checkpoint_for_torch_113) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("sharded_4ranks");
  const auto out = tmp.path() / "out";
  const auto results = run_dcpp_ranks(3, tmp.path(),
                                      {"reshard", "--format", "torch1.13", (case_dir / "ckpt").string(), out.string()});
  all_ok(results);
  BOOST_TEST(contains(results[0].out, "torch-1.13, 3 ranks"), results[0].out);
  const auto manifest = tmp.path() / "manifest.json";
  write_text(manifest, json::serialize(json::object{{"checks", json::array{manifest_entry("sharded_4ranks-3ranks", out, case_dir)}}}));
  check_with_torch(dcp_test::python(), "save_check113.py", "load", manifest);
}

// The one-line error a rank printed ("dcpp: error: ..."), empty if none.
std::string error_line(const std::string& err) {
  const auto at = err.find("dcpp: error: ");
  if (at == std::string::npos) return {};
  return err.substr(at, err.find('\n', at) - at);
}

// Every rank exits 1 within seconds, each with the same error line: the failed rank's own,
// naming it, and saying `what`.
void all_fail_alike(const std::vector<dist_test::RankResult>& results, int failed, const std::string& what) {
  const auto line = error_line(results.at(0).err);
  BOOST_TEST(contains(line, "dcpp: error: rank " + std::to_string(failed) + ": "), dist_test::describe(results));
  BOOST_TEST(contains(line, what), dist_test::describe(results));
  for (const auto& r : results) {
    BOOST_TEST(r.status == 1, dist_test::describe(results));
    BOOST_TEST(!r.killed);
    BOOST_TEST(r.seconds < 30);
    BOOST_TEST(error_line(r.err) == line, dist_test::describe(results));
  }
}

// Rank 1 may not allocate its share: its data limit (RLIMIT_DATA, set by prlimit) is 2 GiB and
// each rank's rows of the checkpoint's 3 x 2^30 float tensor take 4 GiB (the data file is a
// sparse file; nothing is read). Every rank fails with rank 1's out-of-memory error.
BOOST_AUTO_TEST_CASE(a_rank_that_cannot_allocate_its_share_fails_every_rank) {
  TempDir tmp;
  const auto src = tmp.path() / "huge";
  int status = 0;
  const auto made = dcp_test::run_capture(dcp_test::quote(dcp_test::python2x()) + " " +
                                              dcp_test::quote(dcp_test::source_root() / "tests/python/huge_tensor.py") +
                                              " " + dcp_test::quote(src) + " 3 1073741824 2>&1",
                                          &status);
  BOOST_TEST_REQUIRE(status == 0, made);
  dist_test::Launch l;
  l.world = 3;
  l.scratch = tmp.path();
  l.argv = [&](int rank) {
    std::vector<std::string> argv;
    if (rank == 1) argv = {"/usr/bin/prlimit", "--data=" + std::to_string(std::uint64_t{2} << 30)};
    for (const auto& a : {dcp_test::dcpp_exe().string(), std::string("reshard"), std::string("--timeout"),
                          std::string("30"), src.string(), (tmp.path() / "out").string()})
      argv.push_back(a);
    return argv;
  };
  all_fail_alike(dist_test::launch(l), 1, "key 'big': allocating 4294967296 bytes: out of memory");
  BOOST_TEST(!fs::exists(tmp.path() / "out" / ".metadata"));
}

// Rank 0 loads the objects for reshard and cannot parse one (its zip header is broken): every
// rank fails with rank 0's error, which names the object's file, key and byte offset.
BOOST_AUTO_TEST_CASE(a_corrupt_object_fails_every_rank) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  const auto ckpt = tmp.path() / "ckpt";
  dcp_test::copy_checkpoint(case_dir / "ckpt", ckpt);
  const auto doc = json::parse(dcp_test::run_dcpp("inspect --json " + ckpt.string(), tmp.path()).out).as_object();
  std::string key, file;
  std::int64_t offset = -1;
  for (const auto& item : doc.at("items").as_array()) {
    const auto& o = item.as_object();
    if (o.at("kind").as_string() != "bytes") continue;
    key = o.at("fqn").as_string();
    file = o.at("file").as_string();
    offset = o.at("offset").as_int64();
    break;
  }
  BOOST_TEST_REQUIRE(offset >= 0, "the case has no object");
  {
    std::fstream f(ckpt / file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(offset);
    f.write("XXXX", 4);
  }
  const auto results = run_dcpp_ranks(3, tmp.path(), {"reshard", "--timeout", "30", ckpt.string(), (tmp.path() / "out").string()});
  all_fail_alike(results, 0, (ckpt / file).string() + ": key '" + key + "': byte " + std::to_string(offset));
  BOOST_TEST(!fs::exists(tmp.path() / "out" / ".metadata"));
}

// Rank 1 may not write more than 4 KiB into a file (RLIMIT_FSIZE; SIGXFSZ ignored, so the write
// fails with EFBIG instead of killing it): every rank fails with rank 1's write error, and no
// checkpoint appears.
BOOST_AUTO_TEST_CASE(a_rank_that_cannot_write_fails_every_rank) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  dist_test::Launch l;
  l.world = 3;
  l.scratch = tmp.path();
  l.argv = [&](int rank) {
    std::vector<std::string> argv;
    if (rank == 1) argv = {"/bin/sh", "-c", "trap '' XFSZ; exec /usr/bin/prlimit --fsize=4096 \"$0\" \"$@\""};
    for (const auto& a : {dcp_test::dcpp_exe().string(), std::string("reshard"), std::string("--timeout"),
                          std::string("30"), (case_dir / "ckpt").string(), (tmp.path() / "out").string()})
      argv.push_back(a);
    return argv;
  };
  all_fail_alike(dist_test::launch(l), 1, "__1_0.distcp");
  BOOST_TEST(!fs::exists(tmp.path() / "out" / ".metadata"));
}

// torch 1.13 keeps top-level keys only: on 3 ranks, a nested torch 2.13 checkpoint becomes its
// top-level tensors split over the ranks and one object per nested top-level key, its tensors
// loaded whole by rank 0; torch 1.13 loads the values torch 2.13 saved (nested113.py).
BOOST_AUTO_TEST_CASE(reshard_of_a_nested_torch_2x_checkpoint_for_torch_113_on_3_ranks) {
  TempDir tmp;
  const auto oracle = [&](const std::string& python, const std::string& args) {
    int status = 0;
    const auto out = dcp_test::run_capture(dcp_test::quote(python) + " " +
                                               dcp_test::quote(dcp_test::source_root() / "tests/python/nested113.py") +
                                               " " + args + " 2>&1",
                                           &status);
    BOOST_TEST(status == 0, args << ":\n" << out);
    BOOST_TEST(!contains(out, "FAIL"), out);
  };
  oracle(dcp_test::python2x(), "make2x " + dcp_test::quote(tmp.path()));
  const auto out = tmp.path() / "out";
  all_ok(run_dcpp_ranks(3, tmp.path(), {"reshard", "--format", "torch1.13", (tmp.path() / "ckpt2x").string(), out.string()}));
  const auto doc = json::parse(dcp_test::run_dcpp("inspect --json " + out.string(), tmp.path()).out);
  for (const auto& item : doc.as_object().at("items").as_array()) {
    const auto& o = item.as_object();
    if (o.at("fqn") == "weight") BOOST_TEST(o.at("chunks").as_array().size() == 3u);  // 5 rows: 2, 2, 1
    if (o.at("fqn") == "model" || o.at("fqn") == "optim") BOOST_TEST(o.at("kind") == "bytes");
  }
  oracle(dcp_test::python(), "check2x " + dcp_test::quote(tmp.path()) + " " + dcp_test::quote(out));
}

BOOST_AUTO_TEST_CASE(a_rank_with_a_missing_source_fails_every_rank) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_2d_4ranks");
  dist_test::Launch l;
  l.world = 3;
  l.scratch = tmp.path();
  l.argv = [&](int rank) {
    const auto src = rank == 2 ? tmp.path() / "missing" : case_dir / "ckpt";
    return std::vector<std::string>{dcp_test::dcpp_exe().string(), "reshard", "--timeout", "30", src.string(),
                                    (tmp.path() / "out").string()};
  };
  const auto results = dist_test::launch(l);
  for (const auto& r : results) {
    BOOST_TEST(r.status == 1, dist_test::describe(results));
    BOOST_TEST(r.seconds < 60);
    BOOST_TEST(contains(r.err, "dcpp: error: rank 2: "), dist_test::describe(results));
  }
  BOOST_TEST(!fs::exists(tmp.path() / "out"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(reshard_usage_errors_exit_2_before_any_work) {
  TempDir tmp;
  const std::string src = (tmp.path() / "nothing").string(), dst = (tmp.path() / "out").string();
  const std::pair<std::string, std::string> cases[] = {
      {"reshard --layout 2d:2x2 " + src + " " + dst, "has 4 ranks, the world 1"},
      {"reshard --layout 2d:2 " + src + " " + dst, "--layout"},
      {"reshard --layout diagonal " + src + " " + dst, "unknown layout 'diagonal'"},
      {"reshard --format torch3 " + src + " " + dst, "--format takes"},
      {"reshard --timeout 0 " + src + " " + dst, "--timeout takes"},
      {"reshard " + src, "takes 2 argument"},
      {"load --timeout soon " + src, "--timeout takes"},
      {"load --slowest-link network " + src, "--slowest-link takes host or storage"},
      {"reshard --slowest-link sideways " + src + " " + dst, "--slowest-link takes host or storage"},
  };
  for (const auto& [args, message] : cases) {
    const auto r = dcp_test::run_dcpp(args, tmp.path());
    BOOST_TEST(r.status == 2, args << ": " << r.err);
    BOOST_TEST(contains(r.err, message), args << ": " << r.err);
  }
  const auto r = dcp_test::run_dcpp("load " + src, tmp.path());  // WORLD_SIZE is read before any I/O
  BOOST_TEST(r.status == 1, r.err);
  const auto bad = dcp_test::run_capture("WORLD_SIZE=x " + dcp_test::quote(dcp_test::dcpp_exe()) + " load " + src + " 2>&1");
  BOOST_TEST(contains(bad, "WORLD_SIZE='x'"), bad);
}
