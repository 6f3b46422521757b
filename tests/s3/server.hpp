// A SeaweedFS S3 server for the suite (tests/python/seaweed.py), started once per test binary
// on free loopback ports and stopped at its end; the AWS_* variables that reach it are set in
// this process, so every dcpp it runs reads and writes there.
#pragma once
#include <filesystem>
#include <string>

namespace s3_test {

/// The server's state directory (seaweed.py's DIR). Starts the server on first use; when
/// `weed` or botocore is missing the binary exits 77 (Meson's "skipped") saying so.
const std::filesystem::path& server_dir();
/// `seaweed.py COMMAND DIR ARGS` against the suite's server (ARGS quoted for the shell);
/// returns its stdout, failing the test on a non-zero exit.
std::string seaweed(const std::string& command, const std::string& args = {});
/// `s3://dcpp/<prefix>` (starting the server first).
std::string url(const std::string& prefix);

}  // namespace s3_test
