// libFuzzer target: the ClientHello parser and host-name grammar on arbitrary bytes, parsed at once and as they
// arrive (following the parser's own `need`, and a byte at a time). A hello that parses at once parses the same
// however it arrives; bytes refused at once are never accepted piecemeal (the reason may differ: a record header
// over the cap is refused before the bytes behind it are looked at).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "dataplane/client_hello.h"
#include "dataplane/host_name.h"

namespace {

void Agree(const cvmgate::HelloResult& whole, const cvmgate::HelloResult& piecemeal) {
  if (whole.status != cvmgate::HelloStatus::kOk) {
    if (piecemeal.status == cvmgate::HelloStatus::kOk) std::abort();
    return;
  }
  if (piecemeal.status != whole.status || piecemeal.sni != whole.sni || piecemeal.alpn != whole.alpn ||
      piecemeal.wire_bytes != whole.wire_bytes) {
    std::abort();
  }
}

// Feeds `data` the way a worker does, starting from `first` bytes and then
// either each `need` or one more byte each time.
cvmgate::HelloResult Incremental(std::span<const uint8_t> data, size_t cap, size_t first, bool bytewise) {
  cvmgate::HelloParser parser(cap);
  size_t have = std::min(first, data.size());
  for (;;) {
    cvmgate::HelloResult r = parser.Feed(data.first(have));
    if (r.status != cvmgate::HelloStatus::kNeedMore) return r;
    // A parser that asks for bytes it already has would spin the worker.
    if (r.need <= have || r.need > cap) std::abort();
    if (have == data.size()) return r;
    have = bytewise ? have + 1 : std::min(r.need, data.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::string> kBases = {"example.test", "gw.example.org"};
  std::span<const uint8_t> bytes(data, size);
  // Two caps: the default, and a small one so the too-large paths are reached.
  for (size_t cap : {size_t{65536}, size_t{700}}) {
    cvmgate::HelloResult r = cvmgate::ParseClientHello(bytes, cap);
    switch (r.status) {
      case cvmgate::HelloStatus::kNeedMore:
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
    Agree(r, Incremental(bytes, cap, 1, false));
    Agree(r, Incremental(bytes, cap, 1024, false));
    if (size <= 2048) Agree(r, Incremental(bytes, cap, 1, true));
  }
  // The grammar on raw bytes too, not only on names that survived the parser.
  cvmgate::ParseHostName(std::string_view(reinterpret_cast<const char*>(data), size), kBases);
  return 0;
}
