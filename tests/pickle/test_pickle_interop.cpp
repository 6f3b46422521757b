// dcp.pickle against CPython's pickle module (tests/pickle/pickle_oracle.py): our decoder reads
// what pickle.dumps writes at protocols 2-5, and pickle.loads reads what our Encoder writes;
// both compared value by value in a tagged JSON form both sides can build.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.pickle;

namespace pk = dcp::pickle;
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

std::string hex(std::string_view raw) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

json::value tagged(std::string_view kind, json::value v) {
  json::object o;
  o[kind] = std::move(v);
  return o;
}
json::value tagged(std::string_view kind, const std::string& text) { return tagged(kind, json::value(json::string(text))); }
json::value tagged(std::string_view kind, const char* text) { return tagged(kind, std::string(text)); }

json::value float_tag(double d) {
  std::uint64_t bits;
  std::memcpy(&bits, &d, 8);
  std::string be(8, '\0');
  for (int i = 0; i < 8; ++i) be[i] = static_cast<char>(bits >> (8 * (7 - i)));
  return tagged("float", hex(be));
}

// Latin-1 text (as _codecs.encode(text, 'latin1') and bytearray(text, 'latin-1') carry bytes)
// back to the raw bytes: every code point is below 256.
std::string latin1_bytes(std::string_view utf8) {
  std::string out;
  for (std::size_t i = 0; i < utf8.size(); ++i) {
    const auto c = static_cast<unsigned char>(utf8[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      BOOST_TEST_REQUIRE((c >= 0xC2 && c <= 0xC3 && i + 1 < utf8.size()), "not latin-1 text");
      out.push_back(static_cast<char>(((c & 3) << 6) | (static_cast<unsigned char>(utf8[++i]) & 0x3F)));
    }
  }
  return out;
}

// Set items in pickle_oracle.py's order: by their JSON text with object keys sorted (a tagged
// value's objects have one key, so Boost's serialization is that text).
json::array sorted(json::array items) {
  std::sort(items.begin(), items.end(), [](const json::value& a, const json::value& b) {
    return json::serialize(a) < json::serialize(b);
  });
  return items;
}

// The tagged value (pickle_oracle.py's `tag`) of a decoded node, applying what CPython's
// unpickler would do for the globals a DCP reader allows.
json::value tag(const pk::Document& doc, pk::NodeId id, int depth = 0) {
  BOOST_TEST_REQUIRE(depth < 100, "value nested too deeply");
  const auto& n = doc.at(id);
  auto list = [&](std::span<const pk::NodeId> items) {
    json::array a;
    for (auto i : items) a.push_back(tag(doc, i, depth + 1));
    return a;
  };
  auto pairs = [&](std::span<const pk::NodeId> items) {
    json::array a;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2)
      a.push_back(json::array{tag(doc, items[i], depth + 1), tag(doc, items[i + 1], depth + 1)});
    return a;
  };
  switch (n.kind()) {
    case pk::NodeKind::none: return nullptr;
    case pk::NodeKind::boolean: return n.boolean();
    case pk::NodeKind::integer: return tagged("int", std::to_string(n.integer()));
    case pk::NodeKind::big_integer: return tagged("long", hex(n.text()));
    case pk::NodeKind::floating: return float_tag(n.floating());
    case pk::NodeKind::string: return tagged("str", hex(n.text()));
    case pk::NodeKind::bytes: return tagged("bytes", hex(n.text()));
    case pk::NodeKind::tuple: return tagged("tuple", list(n.items()));
    case pk::NodeKind::list: return tagged("list", list(n.items()));
    case pk::NodeKind::set: return tagged("set", sorted(list(n.items())));
    case pk::NodeKind::frozenset: return tagged("frozenset", sorted(list(n.items())));
    case pk::NodeKind::dict: return tagged("dict", pairs(n.items()));
    case pk::NodeKind::persistent: return tagged("persistent", tag(doc, n.args(), depth + 1));
    case pk::NodeKind::object: {
      const auto& cls = doc.at(n.callee());
      json::object o;
      o["object"] = std::string(cls.text()) + "." + std::string(cls.name());
      o["state"] = n.state() == pk::kNoNode ? json::value(nullptr) : tag(doc, n.state(), depth + 1);
      return o;
    }
    case pk::NodeKind::call: {
      const auto& callee = doc.at(n.callee());
      const std::string name = std::string(callee.text()) + "." + std::string(callee.name());
      const auto args = doc.at(n.args()).items();
      auto text_arg = [&](std::size_t i) {
        BOOST_TEST_REQUIRE(i < args.size());
        return std::string(doc.at(args[i]).text());
      };
      if (name == "_codecs.encode") return tagged("bytes", hex(latin1_bytes(text_arg(0))));
      if (name == "builtins.bytes" && args.empty()) return tagged("bytes", "");
      if (name == "builtins.bytearray") {
        if (args.empty()) return tagged("bytearray", "");
        const auto& a0 = doc.at(args[0]);
        if (a0.kind() == pk::NodeKind::string) return tagged("bytearray", hex(latin1_bytes(a0.text())));  // (text, 'latin-1')
        const auto inner = tag(doc, args[0], depth + 1);  // bytes, or _codecs.encode(...) below protocol 3
        BOOST_TEST_REQUIRE(inner.as_object().contains("bytes"), "bytearray of " << inner);
        return tagged("bytearray", inner.at("bytes"));
      }
      if (name == "builtins.set" || name == "builtins.frozenset") {
        const auto kind = name == "builtins.set" ? "set" : "frozenset";
        return tagged(kind, args.empty() ? json::array{} : sorted(list(doc.at(args[0]).items())));
      }
      if (name == "builtins.complex") return tagged("complex", list(args));
      if (name == "builtins.slice") return tagged("slice", list(args));
      if (name == "collections.OrderedDict") return tagged("odict", pairs(n.items()));
      BOOST_FAIL("unexpected call of " << name);
    }
    default: BOOST_FAIL("unexpected node " << doc.describe(id));
  }
  return nullptr;
}

// The stdlib globals CPython uses for the values pickle_oracle.py writes, plus the stand-in
// for DCP's dataclasses.
const pk::AllowList& allow_list() {
  static const pk::AllowList list{{"_codecs", "encode"},     {"collections", "OrderedDict"}, {"argparse", "Namespace"},
                                  {"builtins", "set"},       {"builtins", "frozenset"},      {"builtins", "bytes"},
                                  {"builtins", "bytearray"}, {"builtins", "complex"},        {"builtins", "slice"}};
  return list;
}

fs::path oracle() { return dcp_test::source_root() / "tests/pickle/pickle_oracle.py"; }

void write_text(const fs::path& path, const std::string& text) {
  dcp_test::write_bytes(path, std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                      reinterpret_cast<const std::byte*>(text.data() + text.size())));
}

// Runs `pickle_oracle.py loads DIR`; every file must load to the value it was meant to be.
void python_loads(const fs::path& dir, std::size_t files) {
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::python() + " " + dcp_test::quote(oracle()) + " loads " +
                                             dcp_test::quote(dir) + " 2>&1",
                                         &status);
  std::size_t ok = 0;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("OK ", 0) == 0) ++ok;
    else BOOST_TEST(false, line);
  }
  BOOST_TEST(status == 0, out);
  BOOST_TEST(ok == files, out);
}

// An Encoder output and the value it must load to.
struct Written {
  std::string name;
  std::vector<std::byte> bytes;
  json::value meant;
};

json::value int_tag(std::int64_t v) { return tagged("int", std::to_string(v)); }
json::value str_tag(std::string_view s) { return tagged("str", hex(s)); }

std::vector<Written> encoder_cases() {
  std::vector<Written> out;
  auto add = [&](std::string name, pk::Encoder& e, json::value meant) {
    out.push_back({std::move(name), e.finish(), std::move(meant)});
  };
  for (int protocol : {2, 3, 4, 5}) {
    const auto p = ".p" + std::to_string(protocol);
    {
      pk::Encoder e(protocol);
      json::array meant;
      e.mark();
      const std::int64_t ints[] = {0,         1,         255,       256,
                                   65535,     65536,     -1,        -256,
                                   INT32_MAX, INT32_MIN, std::int64_t{INT32_MAX} + 1, std::int64_t{INT32_MIN} - 1,
                                   INT64_MAX, INT64_MIN, std::int64_t{1} << 40,  -(std::int64_t{1} << 55)};
      for (auto v : ints) {
        e.integer(v);
        meant.push_back(int_tag(v));
      }
      const double floats[] = {0.0, -0.0, 1.5, std::numeric_limits<double>::infinity(),
                               -std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(),
                               std::numeric_limits<double>::denorm_min(), 0.1};
      for (auto v : floats) {
        e.floating(v);
        meant.push_back(float_tag(v));
      }
      e.none();
      meant.push_back(nullptr);
      e.boolean(true);
      meant.push_back(true);
      e.boolean(false);
      meant.push_back(false);
      for (std::string_view s : {std::string_view(""), std::string_view("héllo ✓ 🚀"), std::string_view("nul\0in", 6),
                                 std::string_view("\xed\xb2\x80")}) {  // a lone surrogate (U+DC80)
        e.string(s);
        meant.push_back(str_tag(s));
      }
      std::string all(256, '\0');
      for (int i = 0; i < 256; ++i) all[i] = static_cast<char>(i);
      for (std::string_view b : {std::string_view(""), std::string_view(all)}) {
        e.bytes(std::span(reinterpret_cast<const std::byte*>(b.data()), b.size()));
        meant.push_back(tagged("bytes", hex(b)));
      }
      e.tuple_from_mark();
      add("scalars" + p, e, tagged("tuple", meant));
    }
    {
      // Tuples of every length the encoder spells differently, a list and a dict.
      pk::Encoder e(protocol);
      e.mark();
      for (std::size_t n = 0; n <= 5; ++n) {
        if (n > 3) e.mark();
        for (std::size_t i = 0; i < n; ++i) e.integer(static_cast<std::int64_t>(i));
        if (n > 3) e.tuple_from_mark();
        else e.tuple(n);
      }
      e.empty_list();
      e.mark();
      e.string("a");
      e.empty_list();
      e.appends_from_mark();
      e.empty_dict();
      e.mark();
      e.string("k");
      e.integer(1);
      e.integer(7);
      e.none();
      e.setitems_from_mark();
      e.tuple_from_mark();
      json::array meant;
      for (std::size_t n = 0; n <= 5; ++n) {
        json::array items;
        for (std::size_t i = 0; i < n; ++i) items.push_back(int_tag(static_cast<std::int64_t>(i)));
        meant.push_back(tagged("tuple", items));
      }
      meant.push_back(tagged("list", json::array{str_tag("a"), tagged("list", json::array{})}));
      meant.push_back(tagged("dict", json::array{json::array{str_tag("k"), int_tag(1)}, json::array{int_tag(7), nullptr}}));
      add("containers" + p, e, tagged("tuple", meant));
    }
    {
      // GLOBAL + REDUCE + SETITEMS (an OrderedDict), NEWOBJ + BUILD (a dataclass-like object,
      // as .metadata holds), and a persistent id (as torch.save's data.pkl holds).
      pk::Encoder e(protocol);
      e.global("collections", "OrderedDict");
      e.empty_tuple();
      e.reduce();
      e.mark();
      e.string("b");
      e.integer(2);
      e.string("a");
      e.integer(1);
      e.setitems_from_mark();
      e.global("argparse", "Namespace");
      e.empty_tuple();
      e.newobj();
      e.empty_dict();
      e.mark();
      e.string("fqn");
      e.string("w");
      e.string("offset");
      e.integer(0);
      e.integer(4);
      e.tuple(2);
      e.setitems_from_mark();
      e.build();
      e.mark();
      e.string("storage");
      e.string("0");
      e.integer(12);
      e.tuple_from_mark();
      e.persistent_id();
      e.global(protocol < 3 ? "__builtin__" : "builtins", "set");  // CPython maps the name only below 3
      e.empty_list();
      e.mark();
      e.integer(3);
      e.appends_from_mark();
      e.tuple(1);
      e.reduce();
      e.mark();
      e.tuple_from_mark();  // () via MARK TUPLE
      e.tuple(3);
      e.tuple(3);
      json::object ns{{"object", "argparse.Namespace"},
                      {"state", tagged("dict", json::array{json::array{str_tag("fqn"), str_tag("w")},
                                                           json::array{str_tag("offset"),
                                                                       tagged("tuple", json::array{int_tag(0), int_tag(4)})}})}};
      const json::value meant = tagged(
          "tuple",
          json::array{tagged("odict", json::array{json::array{str_tag("b"), int_tag(2)}, json::array{str_tag("a"), int_tag(1)}}),
                      ns,
                      tagged("tuple", json::array{tagged("persistent", tagged("tuple", json::array{str_tag("storage"), str_tag("0"),
                                                                                                    int_tag(12)})),
                                                  tagged("set", json::array{int_tag(3)}), tagged("tuple", json::array{})})});
      add("objects" + p, e, meant);
    }
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cpython)

BOOST_AUTO_TEST_CASE(pickle_dumps_at_every_protocol_decodes_to_the_same_values) {
  dcp_test::TempDir tmp;
  BOOST_TEST_REQUIRE(dcp_test::run(dcp_test::python() + " " + dcp_test::quote(oracle()) + " dumps " +
                                   dcp_test::quote(tmp.path() / "py")) == 0);
  const auto expected = dcp_test::read_json(tmp.path() / "py" / "values.json").as_object();
  BOOST_TEST_REQUIRE(expected.size() >= 100u);
  // Each decoded value, re-encoded by our Encoder, must load in CPython to the same value.
  const auto again = tmp.path() / "again";
  fs::create_directories(again);
  std::size_t written = 0;
  for (const auto& [name, want] : expected) {
    const auto bytes = dcp_test::read_bytes(tmp.path() / "py" / (std::string(name) + ".pkl"));
    BOOST_TEST_CONTEXT(name) {
      const auto doc = pk::decode(bytes, allow_list());
      const auto got = tag(doc, doc.root());
      BOOST_TEST((got == want), "decoded " << got << "\n CPython: " << want);
      // Protocol 2: what dcpp writes (torch.save's data.pkl, .metadata, convert's objects).
      pk::Encoder e(2);
      if (std::string_view(name).starts_with("long4.")) {
        // LONG4 (an integer of more than 255 bytes) is not written: refused, not mangled.
        BOOST_CHECK_THROW(e.value(doc, doc.root()), dcp::Error);
        continue;
      }
      e.value(doc, doc.root());
      dcp_test::write_bytes(again / (std::string(name) + ".pkl"), e.finish());
      // A protocol-5 bytearray comes back as bytes (the Document has no bytearray kind).
      write_text(again / (std::string(name) + ".json"), json::serialize(got));
      ++written;
    }
  }
  python_loads(again, written);
}

BOOST_AUTO_TEST_CASE(encoder_output_loads_in_cpython_to_the_meant_values) {
  dcp_test::TempDir tmp;
  const auto cases = encoder_cases();
  for (const auto& c : cases) {
    dcp_test::write_bytes(tmp.path() / (c.name + ".pkl"), c.bytes);
    write_text(tmp.path() / (c.name + ".json"), json::serialize(c.meant));
    // Our decoder agrees with the meaning too.
    const auto doc = pk::decode(c.bytes, allow_list(), pk::Limits{.allow_persistent_ids = true});
    BOOST_TEST((tag(doc, doc.root()) == c.meant), c.name);
  }
  python_loads(tmp.path(), cases.size());
}

// Regression: Encoder::value spelled a builtins global (a set node, builtins.complex, ...) as
// `__builtin__` under every protocol, but CPython maps that name only below protocol 3
// (`No module named '__builtin__'`).
BOOST_AUTO_TEST_CASE(encoder_value_above_protocol_2_spells_builtins) {
  const auto doc = pk::decode(std::span(reinterpret_cast<const std::byte*>("\x80\x04\x8f\x94(K\x01\x90."), 9), allow_list());
  for (int protocol : {3, 4, 5}) {
    dcp_test::TempDir tmp;
    pk::Encoder e(protocol);
    e.value(doc, doc.root());
    dcp_test::write_bytes(tmp.path() / "set.pkl", e.finish());
    write_text(tmp.path() / "set.json", json::serialize(tag(doc, doc.root())));
    int status = 0;
    const auto out = dcp_test::run_capture(dcp_test::python() + " " + dcp_test::quote(oracle()) + " loads " +
                                               dcp_test::quote(tmp.path()) + " 2>&1",
                                           &status);
    BOOST_TEST(status == 0, "protocol " << protocol << ": " << out);
  }
}

BOOST_AUTO_TEST_SUITE_END()
