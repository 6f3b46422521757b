// Device names: "cpu", "cuda", "cuda:N".
module;
#include <string>
#include <string_view>
module dcp.memory;
import dcp.error;

namespace dcp::memory {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return {DeviceKind::cpu, 0};
  if (text == "cuda") return {DeviceKind::cuda, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() < 9) {
    int index = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') throw Error(Errc::invalid_argument, "bad device '" + std::string(text) + "'");
      index = index * 10 + (c - '0');
    }
    return {DeviceKind::cuda, index};
  }
  throw Error(Errc::invalid_argument, "bad device '" + std::string(text) + "' (cpu, cuda or cuda:N)");
}

std::string Device::to_string() const {
  return kind == DeviceKind::cpu ? "cpu" : "cuda:" + std::to_string(index);
}

}  // namespace dcp::memory
