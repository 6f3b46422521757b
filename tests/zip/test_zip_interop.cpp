// dcp.zip against real PyTorch (DCPP_PYTHON, else /usr/bin/python3, with torch): parse what
// torch.save wrote, rebuild it byte for byte, and let torch.load and zipfile read our output.
#include "zip_test_util.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

using namespace ztest;
namespace zip = dcp::zip;
namespace fs = std::filesystem;

namespace {

constexpr const char* kSaveScript = R"(
import io, os, sys, torch
out = sys.argv[1]
def save(name, obj, tensors):
    b = io.BytesIO()
    torch.save(obj, b)
    open(os.path.join(out, name + '.pt'), 'wb').write(b.getvalue())
    for i, t in enumerate(tensors):
        open(os.path.join(out, '%s.%d.bin' % (name, i)), 'wb').write(t.numpy().tobytes())
torch.manual_seed(0)
cases = {
    'float': torch.arange(10, dtype=torch.float32),
    'empty': torch.empty(0),
    'scalar': torch.tensor(3.5, dtype=torch.float64),
    'int64': torch.arange(6, dtype=torch.int64).reshape(2, 3),
    'bytes3': torch.arange(3, dtype=torch.uint8),
    'big': torch.randn(100000),
}
for name, t in cases.items():
    save(name, t, [t])
a, b = torch.ones(5, dtype=torch.int32), torch.zeros(3, dtype=torch.float16)
save('dict', {'a': a, 'b': b}, [a, b])
save('int', 42, [])
torch.save(cases['float'], os.path.join(out, 'named.pt'))
)";

// (name, number of data/<i> records) of each archive kSaveScript writes through a stream.
const std::vector<std::pair<std::string, int>> kCases = {
    {"float", 1}, {"empty", 1}, {"scalar", 1}, {"int64", 1}, {"bytes3", 1}, {"big", 1},
    {"dict", 2},  {"int", 0}};

std::string python() {
  const char* env = std::getenv("DCPP_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

Buffer read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in, "cannot open " << path);
  const std::string data{std::istreambuf_iterator<char>(in), {}};
  return bytes(data);
}

void write_file(const fs::path& path, std::span<const std::byte> data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  BOOST_REQUIRE_MESSAGE(out, "cannot write " << path);
}

// Runs a Python script with arguments; returns its exit code.
int run_python(const fs::path& dir, std::string_view name, std::string_view script,
               const std::vector<std::string>& args) {
  const fs::path file = dir / name;
  write_file(file, bytes(script));
  std::string command = "'" + python() + "' '" + file.string() + "'";
  for (const std::string& arg : args) command += " '" + arg + "'";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The torch.save outputs, generated once per test run in a temporary directory.
struct TorchFiles {
  fs::path dir = fs::temp_directory_path() / ("dcpp-zip-test-" + std::to_string(::getpid()));
  TorchFiles() {
    fs::create_directories(dir);
    const int code = run_python(dir, "save.py", kSaveScript, {dir.string()});
    BOOST_REQUIRE_MESSAGE(code == 0, python() << " with torch failed (exit " << code << ")");
  }
  ~TorchFiles() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

const TorchFiles& torch_files() {
  static const TorchFiles files;
  return files;
}

// Walks the step API the storage layer uses, on slices of `whole`, and checks it agrees with
// parse_archive.
void check_step_api(std::span<const std::byte> whole, const zip::Archive& parsed) {
  const zip::EndRecords end =
      zip::parse_end_records(whole.last(std::min(whole.size(), zip::kEndRecordsTail)), whole.size());
  const auto entries = zip::parse_central_directory(
      whole.subspan(end.central_directory_offset, end.central_directory_size), end, whole.size());
  BOOST_REQUIRE(entries.size() == parsed.entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto header = whole.subspan(entries[i].local_header_offset);
    const std::uint64_t length = zip::local_header_length(header.first(zip::kLocalHeaderFixedSize), entries[i]);
    BOOST_TEST(zip::data_offset(header.first(length), entries[i], whole.size()) == parsed.data_offsets[i]);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(interop)

BOOST_AUTO_TEST_CASE(parses_torch_save_archives) {
  const TorchFiles& files = torch_files();
  for (const auto& [name, storages] : kCases) {
    BOOST_TEST_CONTEXT("archive " << name) {
      const Buffer whole = read_file(files.dir / (name + ".pt"));
      const zip::Archive parsed = zip::parse_archive(whole);
      BOOST_TEST(parsed.prefix == "archive/");
      BOOST_REQUIRE(parsed.entries.size() == static_cast<std::size_t>(storages) + 2);
      BOOST_TEST(parsed.entries.front().name == "archive/data.pkl");
      BOOST_TEST(parsed.entries.back().name == "archive/version");
      BOOST_TEST(text(zip::record_data(parsed, whole, "version")) == "3\n");
      for (std::size_t i = 0; i < parsed.entries.size(); ++i) {
        const zip::Entry& e = parsed.entries[i];
        BOOST_TEST(parsed.data_offsets[i] % 64 == 0u);
        BOOST_TEST(e.method == 0u);
        BOOST_TEST(e.flags == (e.size > 0 ? 0x0808u : 0x0800u));
        BOOST_CHECK_NO_THROW(zip::verify_crc32(e, std::span(whole).subspan(parsed.data_offsets[i], e.size)));
      }
      for (int i = 0; i < storages; ++i) {
        const Buffer expected = read_file(files.dir / (name + "." + std::to_string(i) + ".bin"));
        const auto data = zip::record_data(parsed, whole, "data/" + std::to_string(i));
        BOOST_TEST((Buffer(data.begin(), data.end()) == expected));
      }
      check_step_api(whole, parsed);
    }
  }
}

BOOST_AUTO_TEST_CASE(writer_rebuilds_torch_save_byte_for_byte) {
  const TorchFiles& files = torch_files();
  std::vector<std::string> names;
  for (const auto& item : kCases) names.push_back(item.first);
  names.push_back("named");  // saved to a path: prefix "named/"
  for (const std::string& name : names) {
    BOOST_TEST_CONTEXT("archive " << name) {
      const Buffer original = read_file(files.dir / (name + ".pt"));
      const zip::Archive parsed = zip::parse_archive(original);
      Buffer rebuilt;
      auto writer = writer_into(rebuilt, parsed.prefix.substr(0, parsed.prefix.size() - 1));
      for (const zip::Entry& e : parsed.entries)
        writer.add_record(std::string_view(e.name).substr(parsed.prefix.size()),
                          zip::record_data(parsed, original, e.name.substr(parsed.prefix.size())));
      writer.finish();
      BOOST_TEST(rebuilt.size() == original.size());
      BOOST_TEST((rebuilt == original));
    }
  }
}

BOOST_AUTO_TEST_CASE(torch_load_reads_our_archive) {
  const TorchFiles& files = torch_files();
  const Buffer source = read_file(files.dir / "float.pt");
  const zip::Archive parsed = zip::parse_archive(source);
  Buffer floats;
  for (int i = 0; i < 10; ++i) {
    const float value = 100.0f + static_cast<float>(i);
    const auto* raw = reinterpret_cast<const std::byte*>(&value);
    floats.insert(floats.end(), raw, raw + sizeof value);
  }
  Buffer ours;
  auto writer = writer_into(ours, "mine");
  writer.add_record("data.pkl", zip::record_data(parsed, source, "data.pkl"));
  writer.begin_record("data/0", floats.size());
  writer.write(std::span(floats).first(12));
  writer.write(std::span(floats).subspan(12));
  writer.end_record();
  writer.add_record("version", bytes("3\n"));
  writer.finish();
  const fs::path path = files.dir / "ours.pt";
  write_file(path, ours);
  const int code = run_python(files.dir, "load.py",
                              "import sys, torch\n"
                              "t = torch.load(sys.argv[1])\n"
                              "sys.exit(0 if torch.equal(t, torch.arange(100, 110, dtype=torch.float32)) else 3)\n",
                              {path.string()});
  BOOST_TEST(code == 0);
}

BOOST_AUTO_TEST_CASE(python_zipfile_reads_our_zip64_archive) {
  // A 4.3 GB record streamed into a sparse file (zero chunks become holes), then read by
  // Python's zipfile, an independent zip64 implementation.
  const TorchFiles& files = torch_files();
  const fs::path path = files.dir / "zip64.zip";
  std::FILE* file = std::fopen(path.c_str(), "wb");
  BOOST_REQUIRE(file);
  constexpr std::uint64_t kBig = 4'300'000'000;
  const Buffer zeros(64u << 20);
  zip::ArchiveWriter writer([&](std::span<const std::byte> b) {
    if (b.data() == zeros.data()) {
      BOOST_REQUIRE(::fseeko(file, static_cast<off_t>(b.size()), SEEK_CUR) == 0);
    } else {
      BOOST_REQUIRE(std::fwrite(b.data(), 1, b.size(), file) == b.size());
    }
  });
  writer.add_record("data.pkl", bytes("pickle"));
  writer.begin_record("data/0", kBig);
  stream_zeros(writer, kBig, zeros);
  writer.end_record();
  const std::uint64_t after_at = writer.bytes_written();
  writer.add_record("version", bytes("3\n"));
  writer.finish();
  BOOST_REQUIRE(std::fclose(file) == 0);
  const int code = run_python(
      files.dir, "zip64.py",
      "import sys, zipfile\n"
      "z = zipfile.ZipFile(sys.argv[1])\n"
      "info = {i.filename: i for i in z.infolist()}\n"
      "assert list(info) == ['archive/data.pkl', 'archive/data/0', 'archive/version'], list(info)\n"
      "assert info['archive/data/0'].file_size == int(sys.argv[2])\n"
      "assert info['archive/version'].header_offset == int(sys.argv[3])\n"
      "assert z.read('archive/version') == b'3\\n'\n"
      "assert z.read('archive/data.pkl') == b'pickle'\n",
      {path.string(), std::to_string(kBig), std::to_string(after_at)});
  BOOST_TEST(code == 0);
  fs::remove(path);
}

BOOST_AUTO_TEST_SUITE_END()
