// Ranks that agree while saving (ranks played by threads, collective::make_in_process_group): a
// failure injected into any step of one rank (planning, the coordinator's global plan, taking
// the central plan, writing, finishing) or a rank that never arrives makes every rank throw the
// same error naming that rank, with every writer aborted and nothing left behind; a failure
// after the coordinator published reads "published, then ..." and leaves the checkpoint whole;
// async_save runs over its own group while the caller runs collectives on its group.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"
import dcp.collective;

using namespace save_test;
namespace co = dcp::collective;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Where a failure is injected, on one rank.
enum class Inject { none, local_plan, global_plan, central_plan, write, finish, after_publishing };

dcp::Error injected(const char* where) { return dcp::Error(dcp::Errc::io, std::string("injected failure in ") + where); }

class Planner final : public pl::DefaultSavePlanner {
 public:
  explicit Planner(Inject inject) : inject_(inject) {}
  pl::SavePlan create_local_plan() override {
    if (inject_ == Inject::local_plan) throw injected("the local plan");
    return DefaultSavePlanner::create_local_plan();
  }
  std::pair<std::vector<pl::SavePlan>, md::Metadata> create_global_plan(std::vector<pl::SavePlan> plans) override {
    if (inject_ == Inject::global_plan) throw injected("the global plan");
    return DefaultSavePlanner::create_global_plan(std::move(plans));
  }
  pl::SavePlan finish_plan(pl::SavePlan central) override {
    if (inject_ == Inject::central_plan) throw injected("the central plan");
    return DefaultSavePlanner::finish_plan(std::move(central));
  }

 private:
  Inject inject_;
};

// A FileSystemWriter that counts aborts and fails where told.
class Writer final : public st::FileSystemWriter {
 public:
  Writer(const fs::path& dir, Inject inject, st::WriteOptions o = save_test::options())
      : FileSystemWriter(dir, std::move(o)), inject_(inject) {}
  std::vector<pl::WriteResult> write_data(const pl::SavePlan& plan, pl::SavePlanner& planner) override {
    if (inject_ == Inject::write) throw injected("the writes");
    return FileSystemWriter::write_data(plan, planner);
  }
  md::Metadata finish(md::Metadata metadata, const std::vector<std::vector<pl::WriteResult>>& results) override {
    if (inject_ == Inject::finish) throw injected("finish");
    auto written = FileSystemWriter::finish(std::move(metadata), results);
    if (inject_ == Inject::after_publishing) throw injected("the step after publishing");
    return written;
  }
  void abort() noexcept override {
    ++aborts;
    FileSystemWriter::abort();
  }
  std::atomic<int> aborts{0};

 private:
  Inject inject_;
};

// Rank r's rows of a 12x4 float tensor and, on rank 0, an object.
struct Shards {
  std::vector<float> values = std::vector<float>(48);
  std::vector<pl::StateDict> per_rank;
  explicit Shards(int world) {
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
    pl::StateDict whole;
    whole.add_tensor({std::string("w")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(values.data()), DType::float32, {12, 4}));
    whole.add_object({std::string("step")}, pl::ObjectValue::integer(7));
    per_rank = ck::split_rows(whole, world);
  }
};

struct Outcome {
  std::optional<dcp::Error> error;
  int aborts = 0;
};

// ck::save on `world` threads into `dir`, rank `failing` injecting `inject`; rank `absent`
// never calls save.
std::vector<Outcome> save_on_ranks(const fs::path& dir, int world, int failing, Inject inject, int absent = -1,
                                   co::InProcessOptions group_options = {}) {
  Shards shards(world);
  auto groups = co::make_in_process_group(world, group_options);
  std::vector<Outcome> outcomes(static_cast<std::size_t>(world));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        if (r == absent) return;
        const auto mine = r == failing ? inject : Inject::none;
        Writer writer(dir, mine);
        Planner planner(mine);
        auto& out = outcomes[static_cast<std::size_t>(r)];
        try {
          (void)ck::save(shards.per_rank[static_cast<std::size_t>(r)], writer, planner, groups[static_cast<std::size_t>(r)].get());
        } catch (const dcp::Error& e) {
          out.error = e;
        }
        out.aborts = writer.aborts;
      });
  }
  return outcomes;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ranks_agree)

BOOST_AUTO_TEST_CASE(a_failure_in_any_step_of_one_rank_fails_every_rank_and_aborts_every_writer) {
  const std::tuple<Inject, int, const char*> cases[] = {
      {Inject::local_plan, 2, "the local plan"}, {Inject::global_plan, 0, "the global plan"},
      {Inject::central_plan, 2, "the central plan"}, {Inject::write, 1, "the writes"},
      {Inject::write, 0, "the writes"},          {Inject::finish, 0, "finish"}};
  for (const auto& [inject, failing, where] : cases) {
    BOOST_TEST_CONTEXT(where << " on rank " << failing) {
      dcp_test::TempDir tmp;
      const auto dir = tmp.path() / "ckpt";
      const auto outcomes = save_on_ranks(dir, 4, failing, inject);
      const std::string want = "rank " + std::to_string(failing) + ": injected failure in " + where;
      for (std::size_t r = 0; r < outcomes.size(); ++r) {
        BOOST_TEST_CONTEXT("rank " << r) {
          BOOST_REQUIRE(outcomes[r].error.has_value());
          BOOST_TEST(outcomes[r].error->what() == want);
          BOOST_TEST(outcomes[r].aborts == 1);
        }
      }
      BOOST_TEST(!fs::exists(dir / ".metadata"));
      BOOST_TEST(st::save_leftovers(dir).empty());
    }
  }
}

// Rank 3 never saves: the others' collectives time out, and each aborts its writer.
BOOST_AUTO_TEST_CASE(a_rank_that_never_arrives_times_out_and_every_writer_aborts) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  const auto outcomes = save_on_ranks(dir, 4, -1, Inject::none, 3, {.timeout = std::chrono::milliseconds(300)});
  for (int r = 0; r < 3; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      const auto& o = outcomes[static_cast<std::size_t>(r)];
      BOOST_REQUIRE(o.error.has_value());
      BOOST_TEST((o.error->code() == dcp::Errc::cancelled), o.error->what());
      BOOST_TEST(contains(o.error->what(), "save: plan"), o.error->what());
      BOOST_TEST(o.aborts == 1);
    }
  }
  BOOST_TEST(contains(outcomes[0].error->what(), "waiting for rank 3, which did not arrive"), outcomes[0].error->what());
  BOOST_TEST(!fs::exists(dir / ".metadata"));
  BOOST_TEST(st::save_leftovers(dir).empty());
}

// The coordinator's writer fails right after publishing: every rank reports the save as
// published (naming the coordinator), and the checkpoint is there, whole.
BOOST_AUTO_TEST_CASE(a_failure_after_publishing_reads_published_then) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  const auto outcomes = save_on_ranks(dir, 3, 0, Inject::after_publishing);
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_REQUIRE(outcomes[r].error.has_value());
      BOOST_TEST(outcomes[r].error->what() ==
                 std::string("rank 0: published, then injected failure in the step after publishing"));
    }
  }
  BOOST_TEST(outcomes[0].aborts == 0);
  const auto tensors = dcpp_tensors(dir);
  Shards shards(1);
  BOOST_TEST((tensors.at("w") == std::vector<std::byte>(reinterpret_cast<const std::byte*>(shards.values.data()),
                                                        reinterpret_cast<const std::byte*>(shards.values.data() + 48))));

  // save_ranks (what `dcpp convert --ranks` runs) says the same.
  const auto again = tmp.path() / "again";
  Shards more(5);
  std::vector<std::unique_ptr<Writer>> writers;
  std::vector<std::unique_ptr<Planner>> planners;
  std::vector<const pl::StateDict*> dicts;
  std::vector<st::StorageWriter*> writer_ptrs;
  std::vector<pl::SavePlanner*> planner_ptrs;
  for (int r = 0; r < 5; ++r) {
    writers.push_back(std::make_unique<Writer>(again, r == 0 ? Inject::after_publishing : Inject::none));
    planners.push_back(std::make_unique<Planner>(Inject::none));
    dicts.push_back(&more.per_rank[static_cast<std::size_t>(r)]);
    writer_ptrs.push_back(writers.back().get());
    planner_ptrs.push_back(planners.back().get());
  }
  const auto e = dcp_test::thrown<dcp::Error>([&] { (void)ck::save_ranks(dicts, writer_ptrs, planner_ptrs); });
  BOOST_TEST(contains(e.what(), "published, then injected failure"), e.what());
  BOOST_CHECK_NO_THROW((void)ck::verify(again));
}

BOOST_AUTO_TEST_SUITE_END()
