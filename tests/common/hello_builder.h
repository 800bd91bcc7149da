// A ClientHello made to order (SNI, ALPN, padding), cut into records of any size: for the parser's tests and benchmarks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/client_hello.h"

namespace cvmgate::testing {

// Builds a ClientHello with the given extensions, then cuts it into records of `record_size`.
struct HelloBuilder {
  using Bytes = std::vector<uint8_t>;
  Bytes extensions;
  size_t record_size = kMaxTlsRecordPayload;

  static void Put16(Bytes& b, size_t v) {
    b.push_back(uint8_t(v >> 8));
    b.push_back(uint8_t(v));
  }
  HelloBuilder& Sni(const std::string& name) {
    Put16(extensions, 0);
    Put16(extensions, name.size() + 5);
    Put16(extensions, name.size() + 3);
    extensions.push_back(0);
    Put16(extensions, name.size());
    extensions.insert(extensions.end(), name.begin(), name.end());
    return *this;
  }
  HelloBuilder& Alpn(const std::vector<std::string>& protos) {
    Bytes list;
    for (auto& p : protos) {
      list.push_back(uint8_t(p.size()));
      list.insert(list.end(), p.begin(), p.end());
    }
    Put16(extensions, 16);
    Put16(extensions, list.size() + 2);
    Put16(extensions, list.size());
    extensions.insert(extensions.end(), list.begin(), list.end());
    return *this;
  }
  HelloBuilder& Padding(size_t n) {
    Put16(extensions, 21);
    Put16(extensions, n);
    extensions.insert(extensions.end(), n, 0);
    return *this;
  }
  Bytes Body() const {
    Bytes body = {3, 3};
    body.insert(body.end(), 32, 0xab);  // random
    body.push_back(0);                  // session id
    Put16(body, 2);
    body.push_back(0x13);
    body.push_back(0x01);  // TLS_AES_128_GCM_SHA256
    body.push_back(1);
    body.push_back(0);  // null compression
    Put16(body, extensions.size());
    body.insert(body.end(), extensions.begin(), extensions.end());
    return body;
  }
  Bytes Build() const {
    Bytes body = Body();
    Bytes msg = {1, uint8_t(body.size() >> 16), uint8_t(body.size() >> 8), uint8_t(body.size())};
    msg.insert(msg.end(), body.begin(), body.end());
    Bytes wire;
    for (size_t off = 0; off < msg.size(); off += record_size) {
      size_t n = std::min(record_size, msg.size() - off);
      wire.insert(wire.end(), {22, 3, 1});
      Put16(wire, n);
      wire.insert(wire.end(), msg.begin() + off, msg.begin() + off + n);
    }
    return wire;
  }
};

}  // namespace cvmgate::testing
