// ClientHello inspection: a bounds-checked TLS record and ClientHello parser.
#include "dataplane/client_hello.h"

#include <algorithm>

namespace cvmgate {
namespace {

constexpr uint8_t kRecordHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint8_t kNameTypeHostName = 0;
constexpr size_t kMaxHostName = 255;

// A cursor over untrusted bytes: every read checks the remaining length and a
// failed read poisons the cursor, so callers check `ok()` once at the end.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data) : data_(data) {}

  bool ok() const { return ok_; }
  size_t remaining() const { return ok_ ? data_.size() - pos_ : 0; }

  uint32_t Uint(size_t bytes) {
    if (!Has(bytes)) return 0;
    uint32_t v = 0;
    for (size_t i = 0; i < bytes; ++i) v = (v << 8) | data_[pos_ + i];
    pos_ += bytes;
    return v;
  }
  std::span<const uint8_t> Bytes(size_t n) {
    if (!Has(n)) return {};
    auto out = data_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  // A length-prefixed vector: `len_bytes` of length, then that many bytes.
  Reader Vector(size_t len_bytes) {
    size_t n = Uint(len_bytes);
    if (!ok_) return Reader(Poisoned());
    return Reader(Bytes(n), ok_);
  }

 private:
  Reader(std::span<const uint8_t> data, bool ok) : data_(data), ok_(ok) {}
  static Reader Poisoned() { return Reader({}, false); }
  bool Has(size_t n) {
    if (!ok_ || data_.size() - pos_ < n) ok_ = false;
    return ok_;
  }

  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

HelloResult Status(HelloStatus s) {
  HelloResult r;
  r.status = s;
  return r;
}

HelloResult NeedMore(size_t need, size_t max_wire_bytes) {
  if (need > max_wire_bytes) return Status(HelloStatus::kTooLarge);
  HelloResult r;
  r.status = HelloStatus::kNeedMore;
  r.need = need;
  return r;
}

HelloStatus ParseServerName(Reader ext, HelloResult& out) {
  Reader list = ext.Vector(2);
  if (!ext.ok() || ext.remaining() != 0) return HelloStatus::kMalformed;
  bool found = false;
  while (list.ok() && list.remaining() > 0) {
    uint8_t type = list.Uint(1);
    auto name = list.Vector(2);
    if (!list.ok()) return HelloStatus::kMalformed;
    if (type != kNameTypeHostName) continue;
    // RFC 6066 3: at most one name of a given type.
    if (found) return HelloStatus::kMalformed;
    size_t n = name.remaining();
    if (n == 0 || n > kMaxHostName) return HelloStatus::kMalformed;
    auto bytes = name.Bytes(n);
    out.sni.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    found = true;
  }
  return list.ok() ? HelloStatus::kOk : HelloStatus::kMalformed;
}

HelloStatus ParseAlpn(Reader ext, HelloResult& out) {
  Reader list = ext.Vector(2);
  if (!ext.ok() || ext.remaining() != 0 || list.remaining() == 0) return HelloStatus::kMalformed;
  while (list.ok() && list.remaining() > 0) {
    auto proto = list.Vector(1);
    size_t n = proto.remaining();
    if (!list.ok() || n == 0) return HelloStatus::kMalformed;
    auto bytes = proto.Bytes(n);
    out.alpn.emplace_back(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  return list.ok() ? HelloStatus::kOk : HelloStatus::kMalformed;
}

// Parses a complete ClientHello handshake body (after the 4-byte handshake header).
HelloStatus ParseBody(std::span<const uint8_t> body, HelloResult& out) {
  Reader r(body);
  r.Uint(2);   // legacy_version
  r.Bytes(32); // random
  Reader session_id = r.Vector(1);
  Reader ciphers = r.Vector(2);
  Reader compression = r.Vector(1);
  if (!r.ok() || session_id.remaining() > 32 || ciphers.remaining() < 2 ||
      ciphers.remaining() % 2 != 0 || compression.remaining() < 1) {
    return HelloStatus::kMalformed;
  }
  if (r.remaining() == 0) return HelloStatus::kNoSni;  // no extensions at all
  Reader exts = r.Vector(2);
  if (!r.ok() || r.remaining() != 0) return HelloStatus::kMalformed;

  std::vector<uint16_t> seen;
  while (exts.ok() && exts.remaining() > 0) {
    uint16_t type = exts.Uint(2);
    Reader ext = exts.Vector(2);
    if (!exts.ok()) return HelloStatus::kMalformed;
    seen.push_back(type);
    HelloStatus s = HelloStatus::kOk;
    if (type == kExtServerName) s = ParseServerName(ext, out);
    if (type == kExtAlpn) s = ParseAlpn(ext, out);
    if (s != HelloStatus::kOk) return s;
  }
  if (!exts.ok()) return HelloStatus::kMalformed;
  // RFC 8446 4.2: no extension type may appear twice.
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) return HelloStatus::kMalformed;
  return out.sni.empty() ? HelloStatus::kNoSni : HelloStatus::kOk;
}

}  // namespace

std::string_view HelloStatusName(HelloStatus status) {
  switch (status) {
    case HelloStatus::kOk: return "ok";
    case HelloStatus::kNeedMore: return "need_more";
    case HelloStatus::kNotTls: return "not_tls";
    case HelloStatus::kSslV2: return "sslv2";
    case HelloStatus::kMalformed: return "malformed";
    case HelloStatus::kNotClientHello: return "not_client_hello";
    case HelloStatus::kNoSni: return "no_sni";
    case HelloStatus::kTooLarge: return "too_large";
  }
  return "unknown";
}

HelloResult ParseClientHello(std::span<const uint8_t> data, size_t max_wire_bytes) {
  if (data.empty()) return NeedMore(1, max_wire_bytes);
  if (data[0] != kRecordHandshake) {
    // SSLv2 record: high bit of the first byte set (2-byte length), message type 1 at byte 2.
    if (data[0] & 0x80) {
      if (data.size() < 3) return NeedMore(3, max_wire_bytes);
      if (data[2] == kHandshakeClientHello) return Status(HelloStatus::kSslV2);
    }
    return Status(HelloStatus::kNotTls);
  }

  // Gather handshake bytes across records until the whole ClientHello is there.
  std::vector<uint8_t> handshake;
  size_t off = 0;
  for (;;) {
    if (data.size() < off + kTlsRecordHeader) return NeedMore(off + kTlsRecordHeader, max_wire_bytes);
    const uint8_t* h = data.data() + off;
    if (h[0] != kRecordHandshake) {
      // Another record type before the hello is complete.
      return Status(off == 0 ? HelloStatus::kNotTls : HelloStatus::kMalformed);
    }
    if (h[1] != 3) return Status(off == 0 ? HelloStatus::kNotTls : HelloStatus::kMalformed);
    size_t len = (size_t{h[3]} << 8) | h[4];
    // RFC 8446 5.1: no zero-length handshake fragments, no record over 2^14.
    if (len == 0 || len > kMaxTlsRecordPayload) return Status(HelloStatus::kMalformed);
    size_t record_end = off + kTlsRecordHeader + len;
    size_t avail = std::min(data.size(), record_end) - (off + kTlsRecordHeader);
    // Look at the handshake header as soon as its bytes are visible, so garbage
    // and oversized hellos are refused before their records are waited for.
    handshake.insert(handshake.end(), h + kTlsRecordHeader, h + kTlsRecordHeader + avail);
    if (handshake.size() >= 1 && handshake[0] != kHandshakeClientHello) {
      return Status(HelloStatus::kNotClientHello);
    }
    if (handshake.size() >= 4) {
      size_t body = (size_t{handshake[1]} << 16) | (size_t{handshake[2]} << 8) | handshake[3];
      size_t msg_end = body + 4;
      // Each record carries at most 2^14 bytes, so this bounds the wire size from below.
      size_t records = (msg_end + kMaxTlsRecordPayload - 1) / kMaxTlsRecordPayload;
      if (msg_end + records * kTlsRecordHeader > max_wire_bytes) return Status(HelloStatus::kTooLarge);
      if (handshake.size() >= msg_end) {
        if (data.size() < record_end) return NeedMore(record_end, max_wire_bytes);
        // The hello must end with its record: nothing else may follow it there.
        if (handshake.size() != msg_end) return Status(HelloStatus::kMalformed);
        HelloResult out;
        out.status = ParseBody(std::span(handshake).subspan(4, body), out);
        if (out.status != HelloStatus::kOk) {
          out.sni.clear();
          out.alpn.clear();
        }
        out.wire_bytes = record_end;
        return out;
      }
    }
    if (data.size() < record_end) {
      return NeedMore(record_end, max_wire_bytes);
    }
    off = record_end;
  }
}

}  // namespace cvmgate
