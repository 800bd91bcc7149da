// Records the raw answer of the kernel to WG_CMD_GET_DEVICE (every datagram, as received) for the parser's unit tests.
#include <linux/netlink.h>

#include <cstdio>
#include <string>

#include "control/wireguard/genl.h"
#include "kernel-config/netlink.h"
#include "dataplane/strings.h"

int main(int argc, char** argv) {
  using namespace cvmgate;
  if (argc != 3) {
    fprintf(stderr, "usage: %s IFNAME OUTFILE\n  writes the kernel's GET_DEVICE dump of IFNAME to OUTFILE\n", argv[0]);
    return 2;
  }
  const std::string ifname = argv[1];
  auto sock = NlSocket::Open(NETLINK_GENERIC);
  if (!sock.ok()) {
    fprintf(stderr, "wg_record: %s\n", std::string(sock.status().message()).c_str());
    return 1;
  }
  auto family = ResolveGenlFamily(*sock, "wireguard");
  if (!family.ok()) {
    fprintf(stderr, "wg_record: %s\n", std::string(family.status().message()).c_str());
    return 1;
  }
  std::string raw;
  int datagrams = 0;
  alignas(nlmsghdr) char buf[kNlRequestBuffer];
  absl::Status st = sock->Transact(
      PutWgGetDevice(buf, *family, ifname), "dumping " + ifname, [](const nlmsghdr*) { return absl::OkStatus(); },
      [&](const char* data, size_t len) {
        raw.append(data, len);
        ++datagrams;
      });
  if (!st.ok()) {
    fprintf(stderr, "wg_record: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  int messages = 0;
  auto device = ParseWgDump(raw.data(), raw.size(), &messages);
  if (!device.ok()) {
    fprintf(stderr, "wg_record: the recording does not parse: %s\n", std::string(device.status().message()).c_str());
    return 1;
  }
  FILE* f = fopen(argv[2], "wb");
  if (f == nullptr || fwrite(raw.data(), 1, raw.size(), f) != raw.size() || fclose(f) != 0) {
    perror(argv[2]);
    return 1;
  }
  printf("%s: %d datagrams, %d messages, %zu bytes, %zu peers -> %s\n", ifname.c_str(), datagrams, messages, raw.size(),
         device->peers.size(), argv[2]);
  return 0;
}
