// dcp.collective: the steps of Collectives over ranks played by threads (make_in_process_group):
// a local step that throws on one rank makes every rank throw that rank's error, naming it, in
// every kind of step; a rank that never arrives times out the others, naming it; a split group
// runs beside its parent.
#define BOOST_TEST_MODULE dcp.collective
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../support/support.hpp"
import dcp.error;
import dcp.collective;

namespace {

namespace co = dcp::collective;
using co::Bytes;
using co::Collectives;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Runs `body(rank, group)` on `world` threads; each rank's error, if it threw (bodies throw
// rather than assert: Boost.Test's assertions belong to the main thread).
std::vector<std::optional<dcp::Error>> on_ranks(int world, const std::function<void(int, co::ProcessGroup&)>& body,
                                                co::InProcessOptions options = {}) {
  auto groups = co::make_in_process_group(world, options);
  std::vector<std::optional<dcp::Error>> errors(static_cast<std::size_t>(world));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        try {
          body(r, *groups[static_cast<std::size_t>(r)]);
        } catch (const dcp::Error& e) {
          errors[static_cast<std::size_t>(r)] = e;
        }
      });
  }
  return errors;
}

Bytes text(const std::string& s) {
  Bytes b(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) b[i] = static_cast<std::byte>(s[i]);
  return b;
}

// A local step's failure, as the failing rank throws it: a code and every part of the context.
dcp::Error local_failure(int rank) {
  dcp::Error e(dcp::Errc::data_loss, "bad bytes on rank " + std::to_string(rank));
  e.in_file("/data/__" + std::to_string(rank) + "_0.distcp").for_key("model.w").at_offset(1234);
  return e;
}

// Every rank threw the same error: `failed`'s own, with its context and that rank named once.
void every_rank_names(const std::vector<std::optional<dcp::Error>>& errors, int failed) {
  const std::string want = "rank " + std::to_string(failed) + ": /data/__" + std::to_string(failed) +
                           "_0.distcp: key 'model.w': byte 1234: bad bytes on rank " + std::to_string(failed);
  for (std::size_t r = 0; r < errors.size(); ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_REQUIRE(errors[r].has_value());
      BOOST_TEST((errors[r]->code() == dcp::Errc::data_loss), errors[r]->what());
      BOOST_TEST(errors[r]->what() == want);
    }
  }
}

// The four kinds of step, each with its local work failing on rank `failing`.
using Step = std::function<void(Collectives&, int failing)>;
const std::pair<const char*, Step> kSteps[] = {
    {"reduce_scatter",
     [](Collectives& c, int failing) {
       (void)c.reduce_scatter(
           "test", [&] { return c.rank() == failing ? throw local_failure(failing) : text("plan"); },
           [&](Collectives::Results all) { return std::vector<Bytes>(all.size(), text("global")); });
     }},
    {"all_reduce",
     [](Collectives& c, int failing) {
       (void)c.all_reduce(
           "test", [&] { return c.rank() == failing ? throw local_failure(failing) : text("write"); },
           [](Collectives::Results) { return text("metadata"); });
     }},
    {"broadcast from the failing rank",
     [](Collectives& c, int failing) {
       (void)c.broadcast("test", [&]() -> Bytes { throw local_failure(failing); }, failing);
     }},
    {"run",
     [](Collectives& c, int failing) {
       c.run("test", [&] {
         if (c.rank() == failing) throw local_failure(failing);
       });
     }},
};

}  // namespace

BOOST_AUTO_TEST_CASE(a_local_failure_on_one_rank_fails_every_rank_in_every_kind_of_step) {
  for (const auto& [name, step] : kSteps) {
    for (const int failing : {0, 2}) {  // the coordinator, and another rank
      BOOST_TEST_CONTEXT(name << ", rank " << failing << " failing") {
        // After the failed step every rank runs one more: all of them left the failed one together.
        const auto errors = on_ranks(4, [&, step = step](int, co::ProcessGroup& g) {
          Collectives c(&g);
          try {
            step(c, failing);
          } catch (const dcp::Error&) {
            c.run("after", [] {});
            throw;
          }
          throw dcp::Error(dcp::Errc::internal, "the step did not throw");
        });
        every_rank_names(errors, failing);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(the_coordinators_reduction_failing_fails_every_rank_naming_it) {
  const auto errors = on_ranks(3, [](int, co::ProcessGroup& g) {
    Collectives c(&g, 1);
    (void)c.all_reduce("test", [] { return Bytes{}; }, [](Collectives::Results) -> Bytes { throw local_failure(1); });
  });
  every_rank_names(errors, 1);
}

BOOST_AUTO_TEST_CASE(results_reach_their_ranks) {
  const auto errors = on_ranks(5, [](int rank, co::ProcessGroup& g) {
    Collectives c(&g, 2);
    const auto mine = c.reduce_scatter(
        "test", [&] { return text(std::string(static_cast<std::size_t>(rank) * 1000, 'a' + static_cast<char>(rank))); },
        [](Collectives::Results all) {
          std::vector<Bytes> out;
          for (std::size_t r = 0; r < all.size(); ++r) out.push_back(text(std::to_string(all[r].size())));
          return out;
        });
    if (mine != text(std::to_string(rank * 1000))) throw dcp::Error(dcp::Errc::internal, "reduce_scatter result");
    const auto sum = c.all_reduce(
        "test", [&] { return text(std::to_string(rank)); },
        [](Collectives::Results all) {
          int total = 0;
          for (const auto& b : all) total += std::stoi(std::string(reinterpret_cast<const char*>(b.data()), b.size()));
          return text(std::to_string(total));
        });
    if (sum != text("10")) throw dcp::Error(dcp::Errc::internal, "all_reduce result");
    if (!c.broadcast("test", [] { return Bytes{}; }, 4).empty()) throw dcp::Error(dcp::Errc::internal, "broadcast result");
  });
  for (const auto& e : errors) BOOST_TEST(!e.has_value(), (e ? e->what() : ""));
}

// One process: the steps run locally, and a failure names no rank.
BOOST_AUTO_TEST_CASE(one_process_names_no_rank) {
  Collectives c;
  BOOST_TEST((c.all_reduce("test", [] { return text("x"); }, [](Collectives::Results all) {
    return Bytes(all[0].begin(), all[0].end());
  }) == text("x")));
  const auto e = dcp_test::thrown<dcp::Error>([&] { c.run("test", [] { throw local_failure(0); }); });
  BOOST_TEST(e.what() == std::string("/data/__0_0.distcp: key 'model.w': byte 1234: bad bytes on rank 0"));
  BOOST_TEST(!c.split("test"));
}

// Rank 2 of 3 never takes part: the others throw cancelled after the timeout, naming the
// collective and rank 2, instead of waiting for ever.
BOOST_AUTO_TEST_CASE(a_rank_that_never_arrives_times_out_the_others) {
  const auto timeout = std::chrono::milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  const auto errors = on_ranks(
      3,
      [](int rank, co::ProcessGroup& g) {
        if (rank == 2) return;
        Collectives(&g).run("test: step", [] {});
      },
      {.timeout = timeout});
  const auto waited = std::chrono::steady_clock::now() - start;
  BOOST_TEST(!errors[2].has_value());
  for (int r : {0, 1}) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_REQUIRE(errors[static_cast<std::size_t>(r)].has_value());
      const auto& e = *errors[static_cast<std::size_t>(r)];
      BOOST_TEST((e.code() == dcp::Errc::cancelled), e.what());
      BOOST_TEST(contains(e.what(), "test: step"), e.what());
      BOOST_TEST(contains(e.what(), r == 0 ? "waiting for rank 2, which did not arrive" : "waiting for rank 0 (the root)"),
                 e.what());
    }
  }
  BOOST_TEST(waited >= timeout);
  BOOST_TEST(waited < std::chrono::seconds(60));
}

// After a timeout the group is broken: the next collective throws at once.
BOOST_AUTO_TEST_CASE(a_group_that_timed_out_refuses_the_next_collective) {
  const auto errors = on_ranks(
      2,
      [](int rank, co::ProcessGroup& g) {
        Collectives c(&g);
        if (rank == 0) {
          try {
            c.run("first", [] {});
          } catch (const dcp::Error&) {
          }
          c.run("second", [] {});
        }
      },
      {.timeout = std::chrono::milliseconds(100)});
  BOOST_REQUIRE(errors[0].has_value());
  BOOST_TEST((errors[0]->code() == dcp::Errc::failed_precondition), errors[0]->what());
  BOOST_TEST(contains(errors[0]->what(), "failed in an earlier collective"), errors[0]->what());
}

// Each rank runs a sequence on a split group on a second thread while its first thread runs
// another on the parent: neither mixes up the other's payloads.
BOOST_AUTO_TEST_CASE(a_split_group_runs_beside_its_parent) {
  constexpr int kSteps = 200;
  const auto errors = on_ranks(3, [](int rank, co::ProcessGroup& g) {
    auto child = Collectives(&g).split("test: split");
    std::optional<dcp::Error> background;
    std::jthread other([&] {
      try {
        Collectives c(child.get(), 2);
        for (int i = 0; i < kSteps; ++i) {
          const auto got = c.broadcast("child", [&] { return text("child " + std::to_string(i)); });
          if (got != text("child " + std::to_string(i))) throw dcp::Error(dcp::Errc::internal, "child payload mixed up");
        }
      } catch (const dcp::Error& e) {
        background = e;
      }
    });
    Collectives c(&g);
    for (int i = 0; i < kSteps; ++i) {
      const auto got = c.all_reduce(
          "parent", [&] { return text(std::to_string(rank + i)); },
          [&](Collectives::Results all) { return text("parent " + std::to_string(all.size()) + " " + std::to_string(i)); });
      if (got != text("parent 3 " + std::to_string(i))) throw dcp::Error(dcp::Errc::internal, "parent payload mixed up");
    }
    other.join();
    if (background) throw *background;
  });
  for (const auto& e : errors) BOOST_TEST(!e.has_value(), (e ? e->what() : ""));
}

BOOST_AUTO_TEST_CASE(bad_arguments) {
  auto groups = co::make_in_process_group(2);
  BOOST_TEST((dcp_test::thrown<dcp::Error>([&] { Collectives(groups[0].get(), 2); }).code() == dcp::Errc::invalid_argument));
  BOOST_TEST((dcp_test::thrown<dcp::Error>([] { (void)co::make_in_process_group(0); }).code() == dcp::Errc::invalid_argument));
  BOOST_TEST((dcp_test::thrown<dcp::Error>([] {
                (void)co::make_in_process_group(2, {.timeout = std::chrono::milliseconds(0)});
              }).code() == dcp::Errc::invalid_argument));
}
