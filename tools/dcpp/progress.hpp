// A progress bar on stderr for long loads and converts: only on a terminal, never with
// --quiet or --json (the caller decides `enabled`).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace dcpp_cli {

class Progress {
 public:
  Progress(bool enabled, std::uint64_t total, const char* verb)
      : enabled_(enabled && ::isatty(2) && total > 0), total_(total), verb_(verb) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void advance(std::uint64_t bytes) {
    done_ += bytes;
    if (!enabled_) return;
    const int width = 30, filled = static_cast<int>(width * done_ / total_);
    std::fprintf(stderr, "\r%s [%s%s] %3d%%", verb_, std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), static_cast<int>(100 * done_ / total_));
  }
  ~Progress() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 50, "");
  }

 private:
  bool enabled_;
  std::uint64_t total_, done_ = 0;
  const char* verb_;
};

}  // namespace dcpp_cli
