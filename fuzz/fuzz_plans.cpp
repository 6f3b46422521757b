// libFuzzer target: plans and write results as they arrive from other ranks (decode_plan,
// decode_save_plan, decode_write_results, decode_shared_reads), and the coordinator's global save planning over
// decoded save plans (untrusted shapes, offsets and keys).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>
import dcp.error;
import dcp.planning;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  try {
    switch (data[0] % 5) {
      case 0:
        (void)dcp::planning::encode_plan(dcp::planning::decode_plan(bytes));
        break;
      case 1:
        (void)dcp::planning::encode_write_results(dcp::planning::decode_write_results(bytes));
        break;
      case 2:
        (void)dcp::planning::encode_shared_reads(dcp::planning::decode_shared_reads(bytes));
        break;
      default: {
        auto plan = dcp::planning::decode_save_plan(bytes);
        (void)dcp::planning::encode_save_plan(plan);
        // Two ranks holding the same plan: de-duplication, then the global plan and metadata,
        // as the planner does it (one reading of the items) and step by step.
        std::vector<dcp::planning::SavePlan> plans{plan, plan};
        if (data[0] % 5 == 3)
          (void)dcp::planning::DefaultSavePlanner().create_global_plan(std::move(plans));
        else
          (void)dcp::planning::create_global_save_plan(dcp::planning::dedup_save_plans(std::move(plans), true));
      }
    }
  } catch (const dcp::Error&) {
  }
  return 0;
}
