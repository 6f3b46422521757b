// Prints the keys of a checkpoint's .metadata with dcp.metadata alone (no libtorch, no Python).
#include <cstdio>
#include <fstream>
#include <span>
#include <string>
#include <iterator>
#include <vector>
import dcp.error;
import dcp.metadata;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer CKPT_DIR/.metadata\n");
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  const std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    const auto md = dcp::metadata::decode_metadata(
        std::span(reinterpret_cast<const std::byte*>(chars.data()), chars.size()));
    dcp::metadata::validate(md);
    for (const auto& item : md.items)
      std::printf("%s %s\n", item.fqn.c_str(), item.is_tensor() ? "tensor" : "bytes");
    std::printf("%zu keys (%s)\n", md.items.size(), std::string(dcp::metadata::flavor_name(md.flavor)).c_str());
  } catch (const dcp::Error& e) {
    std::fprintf(stderr, "consumer: %s: %s\n", argv[1], e.what());
    return 1;
  }
  return 0;
}
