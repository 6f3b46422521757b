#include "launcher.hpp"

#include <arpa/inet.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <sstream>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/wait.h>
#include <chrono>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace dist_test {
namespace {

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("no free port");
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<RankResult> launch(const Launch& l) {
  const int port = l.port ? l.port : free_port();
  std::vector<pid_t> pids;
  std::vector<RankResult> results(static_cast<std::size_t>(l.world));
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < l.world; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    const std::pair<std::string, std::string> mine[] = {
        {"RANK", std::to_string(r)},          {"WORLD_SIZE", std::to_string(l.world)},
        {"LOCAL_RANK", std::to_string(r)},    {"MASTER_ADDR", "127.0.0.1"},
        {"MASTER_PORT", std::to_string(port)}};
    for (const auto& [k, v] : mine) env.push_back(k + "=" + v);
    for (const auto& [k, v] : l.env) env.push_back(k + "=" + v);
    const auto args = l.argv(r);
    const auto out = l.scratch / ("rank" + std::to_string(r) + ".out");
    const auto err = l.scratch / ("rank" + std::to_string(r) + ".err");
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      std::vector<char*> argv, envp;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      for (const auto& v : env) envp.push_back(const_cast<char*>(v.c_str()));
      envp.push_back(nullptr);
      ::execve(argv[0], argv.data(), envp.data());
      std::fprintf(stderr, "cannot run %s: %s\n", argv[0], std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  std::size_t left = pids.size();
  while (left > 0) {
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (std::size_t r = 0; r < pids.size(); ++r) {
      if (pids[r] == 0) continue;
      int st = 0;
      const pid_t done = ::waitpid(pids[r], &st, WNOHANG);
      if (done == 0 && now > l.deadline_s) {
        ::kill(pids[r], SIGKILL);
        results[r].killed = true;
        continue;
      }
      if (done != pids[r]) continue;
      results[r].status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      results[r].seconds = now;
      pids[r] = 0;
      --left;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < l.world; ++r) {
    results[static_cast<std::size_t>(r)].out = slurp(l.scratch / ("rank" + std::to_string(r) + ".out"));
    results[static_cast<std::size_t>(r)].err = slurp(l.scratch / ("rank" + std::to_string(r) + ".err"));
  }
  return results;
}

std::string describe(const std::vector<RankResult>& results) {
  std::string text;
  for (std::size_t r = 0; r < results.size(); ++r) {
    const auto& x = results[r];
    char head[128];
    std::snprintf(head, sizeof head, "\n  rank %zu: status %d%s (%.1f s): ", r, x.status, x.killed ? " (killed at the deadline)" : "",
                  x.seconds);
    text += head + x.err.substr(0, 600);
  }
  return text;
}

}  // namespace dist_test
