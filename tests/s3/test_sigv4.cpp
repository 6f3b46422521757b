// dcp.s3's SigV4 signer against AWS's published vectors and against botocore's S3SigV4Auth
// signing the same requests (tests/python/sigv4_botocore.py).
#define BOOST_TEST_MODULE dcp.s3
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

import dcp.s3;

namespace s3 = dcp::s3;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

struct Vector {
  const char* name;
  s3::SigningRequest request;
  std::string payload_hash;
  s3::Credentials credentials;
  const char* region;
  const char* service;
  const char* date;
  const char* authorization;
};

// AWS Signature Version 4 test suite (aws-sig-v4-test-suite, 2015-08-30 release): credentials,
// scope and expected Authorization headers of get-vanilla and post-vanilla.
const s3::Credentials kSuite2015{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
// The 2011 release of the same suite (as botocore's tests/unit/auth/aws4_testsuite keeps it):
// get-space and get-utf8, whose paths arrive already percent-encoded and are encoded again.
// Amazon S3 API Reference, "Signature Calculations for the Authorization Header: Transferring
// Payload in a Single Chunk": the GET Object, PUT Object, GET Bucket Lifecycle and GET Bucket
// (List Objects) examples.
const s3::Credentials kS3Docs{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
const std::string kEmpty = std::string(s3::kEmptyPayloadHash);

std::vector<Vector> aws_vectors() {
  const std::vector<std::pair<std::string, std::string>> s3_headers = {
      {"host", "examplebucket.s3.amazonaws.com"}, {"x-amz-date", "20130524T000000Z"}, {"x-amz-content-sha256", kEmpty}};
  auto with = [&](std::vector<std::pair<std::string, std::string>> extra) {
    auto h = s3_headers;
    h.insert(h.end(), extra.begin(), extra.end());
    return h;
  };
  const std::string put_hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
  return {
      {"get-vanilla",
       {"GET", "/", {}, {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}}},
       kEmpty, kSuite2015, "us-east-1", "service", "20150830T123600Z",
       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, "
       "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
      {"post-vanilla",
       {"POST", "/", {}, {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}}},
       kEmpty, kSuite2015, "us-east-1", "service", "20150830T123600Z",
       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, "
       "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
      {"get-space",
       {"GET", "/%20/foo", {}, {{"Date", "Mon, 09 Sep 2011 23:36:00 GMT"}, {"Host", "host.foo.com"}}},
       kEmpty, kSuite2015, "us-east-1", "host", "20110909T233600Z",
       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, SignedHeaders=date;host, "
       "Signature=2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e"},
      {"get-utf8",
       {"GET", "/%E1%88%B4", {}, {{"Date", "Mon, 09 Sep 2011 23:36:00 GMT"}, {"Host", "host.foo.com"}}},
       kEmpty, kSuite2015, "us-east-1", "host", "20110909T233600Z",
       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, SignedHeaders=date;host, "
       "Signature=57b1eb3df3b16a8479c0097b66c0b261cfd65b829419a3f2c3d05319722490b8"},
      {"s3 GET Object",
       {"GET", "/test.txt", {}, with({{"Range", "bytes=0-9"}})},
       kEmpty, kS3Docs, "us-east-1", "s3", "20130524T000000Z",
       "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
       "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
       "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"},
      {"s3 PUT Object",
       {"PUT", "/test$file.text", {},
        {{"Host", "examplebucket.s3.amazonaws.com"}, {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
         {"x-amz-date", "20130524T000000Z"}, {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
         {"x-amz-content-sha256", put_hash}}},
       put_hash, kS3Docs, "us-east-1", "s3", "20130524T000000Z",
       "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
       "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
       "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"},
      {"s3 GET Bucket Lifecycle",
       {"GET", "/", {{"lifecycle", ""}}, s3_headers},
       kEmpty, kS3Docs, "us-east-1", "s3", "20130524T000000Z",
       "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
       "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
       "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"},
      {"s3 GET Bucket (List Objects)",
       {"GET", "/", {{"prefix", "J"}, {"max-keys", "2"}}, s3_headers},
       kEmpty, kS3Docs, "us-east-1", "s3", "20130524T000000Z",
       "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
       "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
       "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"},
  };
}

// Text an object key or query may hold: unreserved characters, those SigV4 must encode
// (space, '+', '=', '&', '%', '/', '~'), and multi-byte UTF-8.
std::string random_text(std::mt19937& random, std::size_t max_length, bool slashes) {
  static const std::vector<std::string> kPieces = {"a", "Z", "0", "-", "_", ".", "~", " ", "+", "=", "&", "%",
                                                   "$", "!", "*", "'", "(", ")", ",", ";", ":", "@", "é", "ሴ",
                                                   "😀", "__0_0.distcp", ".metadata", "/", "?", "#"};
  std::string out;
  const auto length = std::uniform_int_distribution<std::size_t>(1, max_length)(random);
  for (std::size_t i = 0; i < length; ++i) {
    if (slashes && i > 0 && random() % 6 == 0) out += '/';
    out += kPieces[random() % kPieces.size()];
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sigv4)

BOOST_AUTO_TEST_CASE(sha256_and_hmac_match_the_standard_vectors) {
  // FIPS 180-4 examples and RFC 4231 test case 2.
  BOOST_TEST(s3::sha256_hex(bytes_of("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  BOOST_TEST(s3::sha256_hex(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
             "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  BOOST_TEST(s3::sha256_hex({}) == std::string(s3::kEmptyPayloadHash));
  BOOST_TEST(s3::hex(s3::hmac_sha256(bytes_of("Jefe"), bytes_of("what do ya want for nothing?"))) ==
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

BOOST_AUTO_TEST_CASE(signs_the_published_aws_vectors) {
  for (const auto& v : aws_vectors()) {
    BOOST_TEST_CONTEXT(v.name) {
      BOOST_TEST(s3::authorization(v.request, v.payload_hash, v.credentials, v.region, v.service, v.date) ==
                 v.authorization);
    }
  }
}

BOOST_AUTO_TEST_CASE(signs_what_botocore_signs, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  const std::string python = dcp_test::python2x();
  if (dcp_test::run(python + " -c 'import botocore' 2>/dev/null") != 0) {
    BOOST_TEST_MESSAGE("SKIPPED: botocore is not installed in " + python + " (tools/install-deps installs it)");
    return;
  }
  std::mt19937 random(20260830);
  std::vector<std::string> expected_inputs;
  std::vector<std::string> ours;
  std::ostringstream lines;
  for (int n = 0; n < 200; ++n) {
    const std::vector<std::string> methods = {"GET", "HEAD", "PUT", "POST", "DELETE"};
    s3::SigningRequest r;
    r.method = methods[random() % methods.size()];
    const std::string bucket = n % 3 == 0 ? "" : "/bucket-" + std::to_string(n % 7);
    r.path = bucket + "/" + random_text(random, 12, true);
    for (int q = static_cast<int>(random() % 4); q > 0; --q)
      r.query.emplace_back(random_text(random, 4, false), random() % 3 == 0 ? "" : random_text(random, 6, false));
    std::string body;
    if (r.method == "PUT" || r.method == "POST")
      for (auto k = random() % 300; k > 0; --k) body += static_cast<char>(random());
    const std::string date = s3::amz_date(std::chrono::system_clock::from_time_t(1'600'000'000 + random() % 200'000'000));
    const s3::Credentials credentials{"AKID" + std::to_string(random()), random_text(random, 20, true),
                                      random() % 2 ? "session/" + random_text(random, 10, false) : ""};
    const std::string region = random() % 2 ? "us-east-1" : "eu-central-" + std::to_string(random() % 3);
    const std::string host = random() % 2 ? "127.0.0.1:" + std::to_string(1024 + random() % 60000) : "s3.example.com";
    std::vector<std::pair<std::string, std::string>> extra;
    if (random() % 2) extra.emplace_back("Range", "bytes=" + std::to_string(random() % 1000) + "-" + std::to_string(1000 + random() % 1000));
    if (random() % 3 == 0) extra.emplace_back("If-Match", "\"" + std::to_string(random()) + "\"");
    if (random() % 3 == 0) extra.emplace_back("x-amz-checksum-crc32", "AAAA+w==");
    if (random() % 4 == 0) extra.emplace_back("X-Custom", "  two   spaces\tand tab  ");
    // The headers dcp.s3's client signs (http.cpp): these, then date, payload hash and token.
    r.headers = extra;
    r.headers.emplace_back("host", host);
    r.headers.emplace_back("x-amz-date", date);
    const auto payload = s3::sha256_hex(bytes_of(body));
    r.headers.emplace_back("x-amz-content-sha256", payload);
    if (!credentials.session_token.empty()) r.headers.emplace_back("x-amz-security-token", credentials.session_token);
    ours.push_back(s3::authorization(r, payload, credentials, region, "s3", date));

    boost::json::array query, headers;
    for (const auto& [k, v] : r.query) query.push_back(boost::json::array{boost::json::string(k), boost::json::string(v)});
    for (const auto& [k, v] : extra) headers.push_back(boost::json::array{boost::json::string(k), boost::json::string(v)});
    headers.push_back(boost::json::array{"Host", boost::json::string(host)});
    std::string body_hex;
    for (unsigned char c : body) body_hex += s3::hex(std::span<const std::uint8_t>(&c, 1));
    boost::json::object line{{"method", r.method}, {"host", host}, {"path", r.path}, {"query", query},
                             {"headers", headers}, {"body_hex", body_hex}, {"access", credentials.access_key},
                             {"secret", credentials.secret_key}, {"token", credentials.session_token},
                             {"region", region}, {"date", date}};
    lines << boost::json::serialize(line) << "\n";
    expected_inputs.push_back(boost::json::serialize(line));
  }
  dcp_test::TempDir dir;
  {
    std::ofstream(dir.path() / "requests.jsonl") << lines.str();
  }
  int status = 0;
  const auto out = dcp_test::run_capture(python + " " + dcp_test::quote(dcp_test::source_root() / "tests/python/sigv4_botocore.py") +
                                             " < " + dcp_test::quote(dir.path() / "requests.jsonl"),
                                         &status);
  BOOST_TEST_REQUIRE(status == 0);
  std::istringstream in(out);
  std::string theirs;
  std::size_t i = 0;
  for (; std::getline(in, theirs); ++i) {
    BOOST_TEST_REQUIRE(i < ours.size());
    BOOST_TEST_CONTEXT(expected_inputs[i]) { BOOST_TEST(ours[i] == theirs); }
  }
  BOOST_TEST(i == ours.size());
}

BOOST_AUTO_TEST_SUITE_END()
