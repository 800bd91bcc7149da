// ClientHello inspection: finds the SNI (and ALPN) in peeked TLS bytes without consuming them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cvmgate {

enum class HelloStatus : uint8_t {
  kOk,
  kNeedMore,        // the hello is incomplete; `need` says how many wire bytes to wait for
  kNotTls,          // first record is not a TLS handshake record
  kSslV2,           // an SSLv2-format ClientHello
  kMalformed,       // a length or field that does not add up
  kNotClientHello,  // a handshake record that does not start with a ClientHello
  kNoSni,           // a valid hello without a host_name server_name
  kTooLarge,        // the hello would exceed the configured cap
};

std::string_view HelloStatusName(HelloStatus status);

struct HelloResult {
  HelloStatus status = HelloStatus::kNeedMore;
  // kNeedMore: total bytes (from the start of the stream) needed before parsing again.
  // It never asks past the end of the record whose header has been seen, so a
  // peek buffer grows one record at a time.
  size_t need = 0;
  // kOk: the server name exactly as sent, and the offered ALPN protocols.
  std::string sni;
  std::vector<std::string> alpn;
  // kOk: how many wire bytes the ClientHello's records occupy.
  size_t wire_bytes = 0;
};

// The TLS plaintext record limit (RFC 8446 5.1); a ClientHello record may not exceed it.
inline constexpr size_t kMaxTlsRecordPayload = 16384;
inline constexpr size_t kTlsRecordHeader = 5;

// Parses the bytes seen so far. `max_wire_bytes` caps the records the hello may
// occupy; anything larger is kTooLarge as soon as a header says so. Never reads
// outside `data`, never trusts a length.
HelloResult ParseClientHello(std::span<const uint8_t> data, size_t max_wire_bytes);

}  // namespace cvmgate
