// A Tunnel for tests of the control plane: Want() takes effect at once, handshakes and readability are set by hand.
#pragma once

#include <arpa/inet.h>

#include <map>
#include <string>
#include <vector>

#include "control/wireguard/supervisor.h"

namespace cvmgate::testing {

class FakeTunnel : public Tunnel {
 public:
  void Want(std::vector<Peer> wanted, uint64_t gen) override {
    peers.clear();
    for (const Peer& p : wanted) {
      char ip[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &p.ip, ip, sizeof(ip));
      peers[p.key.ToBase64()] = ip;
    }
    if (readable) applied = gen;
    ++wants;
  }
  bool WaitApplied(uint64_t gen, absl::Duration) override { return readable && applied >= gen; }
  View Read() const override {
    View v;
    v.backend = "fake";
    v.readable = readable;
    v.public_key = "R2F0ZXdheUtleUdhdGV3YXlLZXlHYXRld2F5S2V5R2E=";
    v.applied = applied;
    for (const auto& [key, ip] : peers) {
      auto it = handshakes.find(key);
      v.handshakes[key] = it == handshakes.end() ? 0 : it->second;
    }
    return v;
  }

  std::map<std::string, std::string> peers;  // base64 key -> "10.0.0.2"
  std::map<std::string, int64_t> handshakes;  // base64 key -> unix s
  bool readable = true;
  uint64_t applied = 0;
  int wants = 0;
};

}  // namespace cvmgate::testing
