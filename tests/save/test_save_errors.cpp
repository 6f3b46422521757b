// Bad input: each a clear dcp::Error (code, and the key or directory in the message), and
// afterwards nothing a loader would take for a checkpoint: no `.metadata` in the target unless
// the previous checkpoint was there and still verifies, nothing a later save would have to
// clean up.
#include <boost/test/unit_test.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "child_values.hpp"
#include "save_support.hpp"

using namespace save_test;

namespace {

struct Small {
  std::vector<float> a = std::vector<float>(12, 1.5f);
  pl::StateDict sd;
  Small() {
    sd.add_tensor({std::string("a")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(a.data()), DType::float32, {3, 4}));
    sd.add_object({std::string("o")}, pl::ObjectValue::integer(1));
  }
};

// Nothing partial: no leftovers of the failed save in `dir`; `.metadata` only when
// `previous`, and then it verifies.
void nothing_partial(const fs::path& dir, bool previous) {
  const auto leftovers = st::save_leftovers(dir);
  BOOST_TEST(leftovers.empty(), leftovers.size() << " leftovers in " << dir << ", first " << leftovers.front());
  if (previous) {
    BOOST_TEST(fs::exists(dir / ".metadata"));
    BOOST_CHECK_NO_THROW((void)ck::verify(dir));
  } else {
    BOOST_TEST(!fs::exists(dir / ".metadata"), dir);
    if (fs::is_directory(dir))
      for (const auto& e : fs::directory_iterator(dir))
        BOOST_TEST(e.path().extension() != ".distcp", "data file " << e.path() << " left");
  }
}

std::string run_child_shell(const std::string& command, int* status) { return dcp_test::run_capture(command, status); }

}  // namespace

BOOST_AUTO_TEST_CASE(unwritable_target) {
  dcp_test::TempDir tmp;
  Small s;
  // Under a regular file: ENOTDIR for root and everyone else.
  dcp_test::write_bytes(tmp.path() / "file", {std::byte{'x'}});
  const auto under_file = tmp.path() / "file" / "ckpt";
  expect_error([&] { save_one(s.sd, under_file); }, dcp::Errc::io, {under_file.string(), "Not a directory"});
  BOOST_TEST(fs::is_regular_file(tmp.path() / "file"));
  // The target itself a regular file.
  expect_error([&] { save_one(s.sd, tmp.path() / "file"); }, dcp::Errc::failed_precondition,
               {(tmp.path() / "file").string(), "not a directory"});
  // A parent without write permission: moot for root, which ignores permissions.
  if (::geteuid() == 0) {
    BOOST_TEST_MESSAGE("skipping the chmod 0500 parent case: running as root, which ignores permissions");
  } else {
    const auto parent = tmp.path() / "ro";
    fs::create_directories(parent / "ckpt");
    ::chmod(parent.c_str(), 0500);
    expect_error([&] { save_one(s.sd, parent / "ckpt"); }, dcp::Errc::io, {(parent / "ckpt").string()});
    ::chmod(parent.c_str(), 0700);
    nothing_partial(parent / "ckpt", false);
  }
}

// A full file system: a 4 MiB tmpfs in a private mount namespace when the machine allows it,
// and RLIMIT_FSIZE (EFBIG) in save_child always.
BOOST_AUTO_TEST_CASE(full_disk) {
  dcp_test::TempDir tmp;
  const auto mnt = tmp.path() / "mnt";
  fs::create_directories(mnt);
  const std::string child = SAVE_CHILD;
  int status = 0;
  const auto out = run_child_shell(
      "unshare -m sh -c " +
          dcp_test::quote("mount -t tmpfs -o size=4m none " + mnt.string() + " || exit 77; " + child + " " + mnt.string() +
                          "/ckpt 1 --mb 8; echo rc=$?; ls -A " + mnt.string()) +
          " 2>&1",
      &status);
  if (status == 77 || out.find("rc=") == std::string::npos) {
    BOOST_TEST_MESSAGE("skipping the tmpfs case (cannot mount a tmpfs here): " << out);
  } else {
    BOOST_TEST(out.find("rc=3") != std::string::npos, out);
    BOOST_TEST(out.find("No space left on device") != std::string::npos, out);
    BOOST_TEST(out.find(mnt.string() + "/ckpt/__0_") != std::string::npos, out);  // the data file that failed
    // `ls -A` of the file system after the failure: nothing (the target the save created is gone).
    BOOST_TEST(out.substr(out.find("rc=3") + 5).empty(), "left on the full file system: " << out);
  }

  // RLIMIT_FSIZE: a new directory, then over an existing checkpoint.
  const auto dir = tmp.path() / "ckpt";
  const auto fail = dcp_test::run_capture(child + " " + dir.string() + " 1 --mb 8 --fsize 1000000 2>&1", &status);
  BOOST_TEST(status == 3, fail);
  BOOST_TEST(fail.find("error: io") != std::string::npos, fail);
  BOOST_TEST(fail.find("File too large") != std::string::npos, fail);
  BOOST_TEST(fail.find(tmp.path().string()) != std::string::npos, fail);
  nothing_partial(dir, false);
  BOOST_TEST(!fs::exists(dir), "the target the failed save created is still there");
  BOOST_TEST(dcp_test::run(child + " " + dir.string() + " 1 --mb 8 --no-sync > /dev/null") == 0);
  const auto again = dcp_test::run_capture(child + " " + dir.string() + " 2 --mb 8 --fsize 1000000 2>&1", &status);
  BOOST_TEST(status == 3, again);
  nothing_partial(dir, true);
  const auto tensors = dcpp_tensors(dir);
  std::int64_t gen = 0;
  std::memcpy(&gen, tensors.at("marker").data(), 8);
  BOOST_TEST(gen == 1);
}

BOOST_AUTO_TEST_CASE(two_savers_into_one_directory) {
  dcp_test::TempDir tmp;
  Small s;
  const auto dir = tmp.path() / "ckpt";
  st::FileSystemWriter first(dir, options());
  first.set_up_storage_writer(true, 0, 1);  // holds the target's lock, as a save in progress does
  expect_error([&] { save_one(s.sd, dir); }, dcp::Errc::failed_precondition, {dir.string(), "another save"});
  first.abort();
  nothing_partial(dir, false);
  save_one(s.sd, dir);  // the lock is gone
  BOOST_TEST(fs::exists(dir / ".metadata"));
}

BOOST_AUTO_TEST_CASE(unsupported_values) {
  dcp_test::TempDir tmp;
  std::vector<std::byte> mem(16);
  pl::StateDict sd;
  expect_error([&] { sd.add_tensor({std::string("q"), std::string("w")}, pl::contiguous_slice(mem.data(), DType::qint8, {4})); },
               dcp::Errc::unimplemented, {"q.w", "qint8"});
  // An object holding a tensor (a persistent id) cannot be encoded: the save fails with the key.
  Small s;
  auto doc = std::make_shared<dcp::pickle::Document>();
  const dcp::pickle::NodeId pid_items[] = {doc->add_text(dcp::pickle::NodeKind::string, 0, "storage"), doc->add_integer(0, 0)};
  const auto pid = doc->add_persistent(0, doc->add_container(dcp::pickle::NodeKind::tuple, 0, pid_items));
  const dcp::pickle::NodeId items[] = {doc->add_text(dcp::pickle::NodeKind::string, 0, "t"), pid};
  const auto root = doc->add_container(dcp::pickle::NodeKind::dict, 0, items);
  s.sd.add_object({std::string("extra"), std::string("holds_tensor")}, pl::ObjectValue{doc, root});
  const auto dir = tmp.path() / "ckpt";
  expect_error([&] { save_one(s.sd, dir); }, dcp::Errc::unimplemented, {"extra.holds_tensor", "tensor"});
  nothing_partial(dir, false);
  BOOST_TEST(!fs::exists(dir));
  // A dtype torch 1.13 lacks, in a torch 1.13 checkpoint.
  std::vector<std::uint16_t> u(4);
  pl::StateDict sd113;
  sd113.add_tensor({std::string("u16")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(u.data()), DType::uint16, {4}));
  auto o = options();
  o.format = md::Flavor::torch_1_13;
  expect_error([&] { save_one(sd113, dir, o); }, dcp::Errc::unimplemented, {"u16", "uint16", "1.13"});
  nothing_partial(dir, false);
}

BOOST_AUTO_TEST_CASE(key_twice_after_flattening) {
  std::vector<float> a(2);
  pl::StateDict sd;
  sd.add_tensor({std::string("a.b")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(a.data()), DType::float32, {2}));
  expect_error([&] { sd.add_object({std::string("a"), std::string("b")}, pl::ObjectValue::integer(1)); },
               dcp::Errc::invalid_argument, {"a.b", "twice"});
  expect_error([&] { sd.add_tensor({std::string("a"), std::string("b")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(a.data()), DType::float32, {2})); },
               dcp::Errc::invalid_argument, {"a.b"});
  pl::StateDict lists;
  lists.add_object({std::string("l"), std::int64_t{0}}, pl::ObjectValue::integer(1));
  expect_error([&] { lists.add_object({std::string("l"), std::string("0")}, pl::ObjectValue::integer(2)); },
               dcp::Errc::invalid_argument, {"l.0"});
}

// Ranks that disagree: every rank throws, naming the key, and nothing is left.
BOOST_AUTO_TEST_CASE(inconsistent_ranks) {
  dcp_test::TempDir tmp;
  std::vector<float> m(16);
  const auto full = pl::contiguous_slice(reinterpret_cast<std::byte*>(m.data()), DType::float32, {4, 4});
  md::TensorProperties p;
  std::vector<pl::StateDict> overlap(2);
  overlap[0].add_sharded_tensor({std::string("w")}, {4, 4}, p, {pl::SaveChunk{{0, 0}, pl::narrow(full, {0, 0}, {3, 4})}});
  overlap[1].add_sharded_tensor({std::string("w")}, {4, 4}, p, {pl::SaveChunk{{2, 0}, pl::narrow(full, {2, 0}, {2, 4})}});
  const auto dir = tmp.path() / "ckpt";
  expect_error([&] { save_many(overlap, dir); }, dcp::Errc::invalid_argument, {"'w'", "overlap"});
  nothing_partial(dir, false);
  std::vector<pl::StateDict> gap(2);
  gap[0].add_sharded_tensor({std::string("w")}, {4, 4}, p, {pl::SaveChunk{{0, 0}, pl::narrow(full, {0, 0}, {1, 4})}});
  gap[1].add_sharded_tensor({std::string("w")}, {4, 4}, p, {pl::SaveChunk{{2, 0}, pl::narrow(full, {2, 0}, {2, 4})}});
  expect_error([&] { save_many(gap, dir); }, dcp::Errc::invalid_argument, {"'w'", "cover"});
  nothing_partial(dir, false);
  std::vector<pl::StateDict> kinds(2);
  kinds[0].add_tensor({std::string("x")}, full);
  kinds[1].add_object({std::string("x")}, pl::ObjectValue::integer(1));
  expect_error([&] { save_many(kinds, dir); }, dcp::Errc::invalid_argument, {"'x'"});
  nothing_partial(dir, false);
}

BOOST_AUTO_TEST_CASE(existing_checkpoint_and_foreign_files) {
  dcp_test::TempDir tmp;
  Small s;
  const auto dir = tmp.path() / "ckpt";
  save_one(s.sd, dir);
  const auto before = dcp_test::read_bytes(dir / ".metadata");
  expect_error([&] { save_one(s.sd, dir); }, dcp::Errc::failed_precondition, {dir.string(), "already holds a checkpoint"});
  nothing_partial(dir, true);
  BOOST_TEST((dcp_test::read_bytes(dir / ".metadata") == before));
  auto o = options();
  o.overwrite = true;
  save_one(s.sd, dir, o);  // allowed with overwrite
  nothing_partial(dir, true);

  // A directory holding the user's files takes a checkpoint beside them (as torch's save does)
  // and keeps them, overwrite or not.
  const auto mine = tmp.path() / "mine";
  fs::create_directories(mine / "sub");
  dcp_test::write_bytes(mine / "notes.txt", {std::byte{'n'}});
  dcp_test::write_bytes(mine / "sub" / "x.distcp", {std::byte{'x'}});
  save_one(s.sd, mine);
  nothing_partial(mine, true);
  BOOST_TEST((dcp_test::read_bytes(mine / "notes.txt") == std::vector<std::byte>{std::byte{'n'}}));
  BOOST_TEST(fs::exists(mine / "sub" / "x.distcp"));
  // A checkpoint plus a foreign file, replaced: the file stays, the old data files go.
  dcp_test::write_bytes(dir / "README", {std::byte{'r'}});
  const auto old_files = dcp_test::list_names(dir);
  save_one(s.sd, dir, o);
  nothing_partial(dir, true);
  BOOST_TEST(fs::exists(dir / "README"));
  for (const auto& name : old_files)
    if (name.ends_with(".distcp")) BOOST_TEST(!fs::exists(dir / name), name << " of the replaced checkpoint is still there");
}

// A failure on one rank reaches every rank as that rank's own error, named once: "rank R:
// key 'K': message", not wrapped again at each collective it passed through.
BOOST_AUTO_TEST_CASE(failure_on_another_rank) {
  dcp_test::TempDir tmp;
  std::vector<pl::StateDict> sds(3);
  auto doc = std::make_shared<dcp::pickle::Document>();
  const auto pid = doc->add_persistent(0, doc->add_text(dcp::pickle::NodeKind::string, 0, "storage"));
  doc->set_root(pid);
  std::vector<float> v(4);
  for (auto& sd : sds) sd.add_tensor({std::string("v")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(v.data()), DType::float32, {4}));
  sds[2].add_object({std::string("bad")}, pl::ObjectValue{doc, pid});
  const auto dir = tmp.path() / "ckpt";
  const auto e = dcp_test::thrown<dcp::Error>([&] { save_many(sds, dir); });
  BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(dcp::Errc::unimplemented), e.what());
  BOOST_TEST((e.context().rank == std::optional<int>(2)), e.what());
  BOOST_TEST(e.context().key == "bad", e.what());
  const std::string text = e.what();
  BOOST_TEST(text.rfind("rank 2: ", 0) == 0, text);
  BOOST_TEST(text.find("rank", 1) == std::string::npos, "the rank is named more than once: " << text);
  BOOST_TEST(text.find("failed:") == std::string::npos, text);
  nothing_partial(dir, false);
}

// Keys and object strings that Python cannot decode would make torch's load of `.metadata` or
// of the object fail: refused when added, naming the key. Lone surrogates (Python's
// "surrogatepass", which torch keys may hold) are accepted.
BOOST_AUTO_TEST_CASE(strings_python_cannot_read) {
  std::vector<float> a(2);
  const auto mem = pl::contiguous_slice(reinterpret_cast<std::byte*>(a.data()), DType::float32, {2});
  pl::StateDict sd;
  expect_error([&] { sd.add_tensor({std::string("w\xff")}, mem); }, dcp::Errc::invalid_argument, {"not UTF-8"});
  expect_error([&] { sd.add_tensor({std::string("model"), std::string("\xc3")}, mem); }, dcp::Errc::invalid_argument,
               {"not UTF-8"});
  expect_error([&] { sd.add_tensor({std::string("overlong\xc0\xaf")}, mem); }, dcp::Errc::invalid_argument, {"not UTF-8"});
  expect_error([&] { sd.add_object({std::string("name")}, pl::ObjectValue::string("caf\xe9")); }, dcp::Errc::invalid_argument,
               {"'name'", "not UTF-8"});
  // A dict key inside an object.
  auto doc = std::make_shared<dcp::pickle::Document>();
  const dcp::pickle::NodeId items[] = {doc->add_text(dcp::pickle::NodeKind::string, 0, "\x80"), doc->add_integer(0, 1)};
  const auto root = doc->add_container(dcp::pickle::NodeKind::dict, 0, items);
  expect_error([&] { sd.add_object({std::string("conf")}, pl::ObjectValue{doc, root}); }, dcp::Errc::invalid_argument,
               {"'conf'"});
  BOOST_TEST(sd.size() == 0u);
  // Valid: multi-byte UTF-8, a lone surrogate, bytes objects (any byte).
  sd.add_tensor({std::string("caf\xc3\xa9 \xf0\x9f\x98\x80")}, mem);
  sd.add_tensor({std::string("lone\xed\xa0\x80")}, mem);
  auto bytes_doc = std::make_shared<dcp::pickle::Document>();
  const auto b = bytes_doc->add_text(dcp::pickle::NodeKind::bytes, 0, "\xff\xfe");
  sd.add_object({std::string("raw")}, pl::ObjectValue{bytes_doc, b});
  dcp_test::TempDir tmp;
  save_one(sd, tmp.path() / "ckpt");
  const auto got = dcpp_tensors(tmp.path() / "ckpt");
  BOOST_TEST(got.count("lone\xed\xa0\x80") == 1u);
}

// Nothing beside the target is touched: not a sibling, not a hidden directory named like the
// staging directories older writers used.
BOOST_AUTO_TEST_CASE(nothing_beside_the_target) {
  dcp_test::TempDir tmp;
  Small s;
  const auto dir = tmp.path() / "ckpt";
  const auto hidden = tmp.path() / ".ckpt.dcpp-0123abcd-0123-4567-89ab-0123456789ab";
  const auto sibling = tmp.path() / "ckpt.old";
  for (const auto& d : {hidden, sibling}) fs::create_directories(d);
  dcp_test::write_bytes(sibling / ".metadata", {std::byte{'m'}});
  save_one(s.sd, dir);
  auto o = options();
  o.overwrite = true;
  save_one(s.sd, dir, o);
  BOOST_TEST(fs::exists(hidden));
  BOOST_TEST(fs::exists(sibling / ".metadata"));
  BOOST_CHECK_NO_THROW((void)ck::verify(dir));
}
