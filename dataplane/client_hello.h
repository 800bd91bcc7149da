// ClientHello inspection: finds the SNI (and ALPN) in peeked TLS bytes without consuming them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
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
  // kNeedMore: total bytes (from the start of the stream) needed before parsing
  // again. It never asks for more than the rest of the hello can occupy: once
  // the handshake header gives the hello's length, it is that many bytes more
  // plus one record header, however finely the client cuts its records.
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

// Parses a ClientHello as its bytes arrive. Each Feed() is given the stream
// from its first byte (a peek never consumes) and looks only at the bytes it
// has not seen, so a hello costs time linear in its size however it is cut
// into records and segments. `max_wire_bytes` caps the records the hello may
// occupy; anything larger is kTooLarge as soon as a header says so. Never reads
// outside `data`, never trusts a length.
class HelloParser {
 public:
  HelloParser() = default;
  explicit HelloParser(size_t max_wire_bytes) : max_(max_wire_bytes) {}
  // `data` must start with the bytes given before (it may only have grown).
  // While the hello is incomplete, `need` is the fewest bytes the rest of it
  // can take: the record being read to its end, then the handshake bytes still
  // missing in one more record at the least. Waiting for that never waits for
  // bytes a client will not send, and even with 1-byte records it covers a
  // sixth of what remains each time: a logarithmic number of peeks.
  HelloResult Feed(std::span<const uint8_t> data);

 private:
  HelloResult Finish(std::span<const uint8_t> body, size_t wire_bytes);

  size_t max_ = 0;
  size_t record_ = 0;         // where the record being read starts
  size_t taken_ = 0;          // bytes of that record's payload already gathered
  size_t msg_end_ = 0;        // the handshake message's length with its header; 0 until known
  size_t filled_ = 0;         // handshake bytes gathered so far
  uint8_t head_[4] = {};      // the handshake header, until it gives the length
  std::unique_ptr<uint8_t[]> hs_;  // the whole message (msg_end_ bytes, then 8 of slack) when it spans records
};

// One-shot: the bytes seen so far, parsed from scratch.
HelloResult ParseClientHello(std::span<const uint8_t> data, size_t max_wire_bytes);

}  // namespace cvmgate
