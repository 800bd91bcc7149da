// libFuzzer target: the WireGuard reply parsers (kernel GET_DEVICE dumps over netlink, wireguard-go's UAPI
// replies) on arbitrary bytes. They read what another process wrote: no length may send them past the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "control/wireguard/genl.h"
#include "control/wireguard/uapi.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A heap copy exactly `size` long (and, like the kernel's buffer, aligned
  // for nlmsghdr), so ASan sees any byte read past it.
  auto copy = std::unique_ptr<char[]>(new char[size]);
  char* bytes = copy.get();
  std::memcpy(bytes, data, size);
  int messages = -1;
  auto device = cvmgate::ParseWgDump(bytes, size, &messages);
  if (device.ok() && messages < 0) std::abort();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto got = cvmgate::ParseUapiGetReply(text, "wgfuzz");
  if (got.ok()) {
    for (const cvmgate::WgPeer& p : got->peers) {
      if (p.last_handshake_sec < 0) std::abort();
    }
  }
  (void)cvmgate::ParseUapiSetReply(text);
  return 0;
}
