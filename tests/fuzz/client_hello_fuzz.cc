// libFuzzer target: the ClientHello parser and host-name grammar on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "dataplane/client_hello.h"
#include "dataplane/host_name.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::string> kBases = {"example.test", "gw.example.org"};
  // Two caps: the default, and a small one so the too-large paths are reached.
  for (size_t cap : {size_t{65536}, size_t{700}}) {
    cvmgate::HelloResult r = cvmgate::ParseClientHello(std::span(data, size), cap);
    switch (r.status) {
      case cvmgate::HelloStatus::kNeedMore:
        // A parser that asks for bytes it already has would spin the worker.
        if (r.need <= size || r.need > cap) std::abort();
        break;
      case cvmgate::HelloStatus::kOk: {
        if (r.sni.empty() || r.wire_bytes > size || r.wire_bytes > cap) std::abort();
        cvmgate::NameResult n = cvmgate::ParseHostName(r.sni, kBases);
        if (n.status == cvmgate::NameStatus::kOk && (n.target.id.empty() || n.target.port == 0)) std::abort();
        break;
      }
      default:
        if (!r.sni.empty()) std::abort();
    }
  }
  // The grammar on raw bytes too, not only on names that survived the parser.
  cvmgate::ParseHostName(std::string_view(reinterpret_cast<const char*>(data), size), kBases);
  return 0;
}
