// ClientHello inspection: a bounds-checked TLS record and ClientHello parser.
#include "dataplane/client_hello.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cvmgate {
namespace {

constexpr uint8_t kRecordHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint8_t kNameTypeHostName = 0;
constexpr size_t kMaxHostName = 255;
// A record header read as a little-endian word from its first byte: type 22
// and major version 3 in bytes 0 and 1, any minor version, the length's high
// byte in byte 3 and its low byte in byte 4 (the rest is payload).
constexpr uint64_t kRecordHeaderMask = 0xff'ff00'ffffull;
constexpr uint64_t kHandshakeRecordHeader = 0x0316;

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

#if defined(__x86_64__)
// Runs of 1-byte records, eight (48 bytes) at a time: three 16-byte loads
// checked against the repeating header (22, 3, any, 0, 1) and three byte
// shuffles that pick the payload bytes out. Returns how many of the first
// `runs` records at `p` it took; the caller takes the rest one by one.
// SSSE3 is in every x86-64 server CPU since 2006; without it this takes none.
__attribute__((target("ssse3"))) size_t TakeOneByteRecordsSsse3(const uint8_t* p, size_t runs, uint8_t* out) {
  alignas(16) static const uint8_t kExpect[48] = {
      22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0,
      22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0, 22, 3, 0, 0, 1, 0};
  alignas(16) static const uint8_t kMask[48] = {
      255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0,
      255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0, 255, 255, 0};
  constexpr int8_t z = -128;  // pshufb: a zero byte
  const __m128i pick0 = _mm_setr_epi8(5, 11, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
  const __m128i pick1 = _mm_setr_epi8(z, z, 1, 7, 13, z, z, z, z, z, z, z, z, z, z, z);
  const __m128i pick2 = _mm_setr_epi8(z, z, z, z, z, 3, 9, 15, z, z, z, z, z, z, z, z);
  auto vec = [](const uint8_t* at) { return _mm_load_si128(reinterpret_cast<const __m128i*>(at)); };
  const __m128i m0 = vec(kMask), m1 = vec(kMask + 16), m2 = vec(kMask + 32);
  const __m128i e0 = vec(kExpect), e1 = vec(kExpect + 16), e2 = vec(kExpect + 32);
  size_t i = 0;
  // Two blocks of eight per round: one branch and one 16-byte store for sixteen records.
  for (; i + 16 <= runs; i += 16, p += 96) {
    const __m128i a0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i a1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    const __m128i a2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
    const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 48));
    const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 64));
    const __m128i b2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 80));
    const __m128i same = _mm_and_si128(
        _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(a0, m0), e0),
                                    _mm_cmpeq_epi8(_mm_and_si128(a1, m1), e1)),
                      _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(a2, m2), e2),
                                    _mm_cmpeq_epi8(_mm_and_si128(b0, m0), e0))),
        _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(b1, m1), e1), _mm_cmpeq_epi8(_mm_and_si128(b2, m2), e2)));
    if (_mm_movemask_epi8(same) != 0xffff) break;
    const __m128i lo = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a0, pick0), _mm_shuffle_epi8(a1, pick1)),
                                    _mm_shuffle_epi8(a2, pick2));
    const __m128i hi = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(b0, pick0), _mm_shuffle_epi8(b1, pick1)),
                                    _mm_shuffle_epi8(b2, pick2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_unpacklo_epi64(lo, hi));
  }
  for (; i + 8 <= runs; i += 8, p += 48) {
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    const __m128i v2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
    const __m128i same = _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(v0, m0), e0),
                                                     _mm_cmpeq_epi8(_mm_and_si128(v1, m1), e1)),
                                       _mm_cmpeq_epi8(_mm_and_si128(v2, m2), e2));
    if (_mm_movemask_epi8(same) != 0xffff) break;
    __m128i bytes = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v0, pick0), _mm_shuffle_epi8(v1, pick1)),
                                 _mm_shuffle_epi8(v2, pick2));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), bytes);
  }
  return i;
}
#endif

size_t TakeOneByteRecords(const uint8_t* p, size_t runs, uint8_t* out) {
#if defined(__x86_64__)
  static const bool ssse3 = __builtin_cpu_supports("ssse3");
  if (ssse3) return TakeOneByteRecordsSsse3(p, runs, out);
#endif
  (void)p;
  (void)runs;
  (void)out;
  return 0;
}

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

HelloResult HelloParser::Feed(std::span<const uint8_t> data) {
  const uint8_t* d = data.data();
  const size_t n = data.size();
  if (n == 0) return NeedMore(1, max_);
  if (record_ == 0 && taken_ == 0 && d[0] != kRecordHandshake) {
    // SSLv2 record: high bit of the first byte set (2-byte length), message type 1 at byte 2.
    if (d[0] & 0x80) {
      if (n < 3) return NeedMore(3, max_);
      if (d[2] == kHandshakeClientHello) return Status(HelloStatus::kSslV2);
    }
    return Status(HelloStatus::kNotTls);
  }
  for (;;) {
    if (msg_end_ > 0 && taken_ == 0) {
      // Steady state, whole records in view: a tight loop on locals copies
      // their payloads in; whatever it does not take (a cut record, a bad
      // header) is left to the checks below.
      size_t rec = record_, filled = filled_;
      uint8_t* dst = hs_.get();
      // The shapes an attacker picks, runs of equal records of 1 to 8 bytes:
      // with a constant stride no load waits for the length before it, and
      // each record is one 8-byte header check and one 8-byte move (for 1-byte
      // records, the header's word holds the payload too).
      if (rec + kTlsRecordHeader <= n) {
        const size_t len = (size_t{d[rec + 3]} << 8) | d[rec + 4];
        const size_t stride = kTlsRecordHeader + len;
        if (len >= 1 && len <= 8 && rec + kTlsRecordHeader + 8 <= n) {
          const uint64_t want = kHandshakeRecordHeader | (uint64_t{len} << 32);
          // (1-byte records divide by constants: no division instruction on their path.)
          const size_t space = n - rec - kTlsRecordHeader - 8;
          size_t runs = len == 1 ? std::min(msg_end_ - filled, space / (kTlsRecordHeader + 1) + 1)
                                 : std::min((msg_end_ - filled) / len, space / stride + 1);
          const uint8_t* p = d + rec;
          uint8_t* out = dst + filled;
          size_t i = 0;
          if (len == 1) {
            // The smallest records: eight at a time where the CPU can, and the
            // payload byte is in the header's word already.
            i = TakeOneByteRecords(p, runs, out);
            p += i * (kTlsRecordHeader + 1);
            for (; i < runs; ++i, p += kTlsRecordHeader + 1) {
              uint64_t header;
              std::memcpy(&header, p, sizeof(header));
              if ((header & kRecordHeaderMask) != want) break;
              out[i] = static_cast<uint8_t>(header >> 40);
            }
          } else {
            for (; i < runs; ++i, p += stride, out += len) {
              uint64_t header, payload;
              std::memcpy(&header, p, sizeof(header));
              if ((header & kRecordHeaderMask) != want) break;
              std::memcpy(&payload, p + kTlsRecordHeader, sizeof(payload));
              std::memcpy(out, &payload, sizeof(payload));  // hs_ has 8 bytes of slack
            }
          }
          filled += i * len;
          rec += i * stride;
        }
      }
      while (filled < msg_end_ && rec + kTlsRecordHeader <= n) {
        const uint8_t* h = d + rec;
        const size_t len = (size_t{h[3]} << 8) | h[4];
        if (h[0] != kRecordHandshake || h[1] != 3 || len == 0 || len > kMaxTlsRecordPayload ||
            rec + kTlsRecordHeader + len > n || len > msg_end_ - filled) {
          break;
        }
        if (len <= 8 && rec + kTlsRecordHeader + 8 <= n) {
          // Small records: one 8-byte move (hs_ has the slack), no call.
          uint64_t v;
          std::memcpy(&v, h + kTlsRecordHeader, sizeof(v));
          std::memcpy(dst + filled, &v, sizeof(v));
        } else {
          std::memcpy(dst + filled, h + kTlsRecordHeader, len);
        }
        filled += len;
        rec += kTlsRecordHeader + len;
      }
      record_ = rec;
      filled_ = filled;
      if (filled == msg_end_) return Finish(std::span(hs_.get() + 4, msg_end_ - 4), rec);
    }
    const size_t off = record_;
    if (n < off + kTlsRecordHeader) {
      // The next header has not arrived. Once the message length is known, the
      // rest of the message comes behind it, at the least.
      return NeedMore(off + kTlsRecordHeader + (msg_end_ > 0 ? msg_end_ - filled_ : 0), max_);
    }
    const uint8_t* h = d + off;
    if (h[0] != kRecordHandshake || h[1] != 3) {
      // Another record type before the hello is complete, or not TLS at all.
      return Status(off == 0 ? HelloStatus::kNotTls : HelloStatus::kMalformed);
    }
    const size_t len = (size_t{h[3]} << 8) | h[4];
    // RFC 8446 5.1: no zero-length handshake fragments, no record over 2^14.
    if (len == 0 || len > kMaxTlsRecordPayload) return Status(HelloStatus::kMalformed);
    const size_t payload = off + kTlsRecordHeader;
    const size_t record_end = payload + len;
    const size_t avail = std::min(n, record_end) - payload;
    // The common case, a whole hello in its first record, is parsed in place
    // (`data` always starts at the stream's first byte, so this holds however
    // much of the record an earlier call had seen).
    if (off == 0 && avail == len && len >= 4 && h[5] == kHandshakeClientHello &&
        ((size_t{h[6]} << 16) | (size_t{h[7]} << 8) | h[8]) + 4 == len) {
      if (record_end > max_) return Status(HelloStatus::kTooLarge);
      return Finish(data.subspan(payload + 4, len - 4), record_end);
    }
    // Otherwise each byte is gathered once: first the 4-byte handshake header,
    // which gives the message's length, then straight into a buffer of that size.
    const uint8_t* src = d + payload + taken_;
    size_t take = avail - taken_;
    while (msg_end_ == 0 && take > 0) {
      head_[filled_++] = *src++;
      --take;
      if (head_[0] != kHandshakeClientHello) return Status(HelloStatus::kNotClientHello);
      if (filled_ == 4) {
        msg_end_ = ((size_t{head_[1]} << 16) | (size_t{head_[2]} << 8) | head_[3]) + 4;
        // Each record carries at most 2^14 bytes, so this bounds the wire size from below.
        size_t records = (msg_end_ + kMaxTlsRecordPayload - 1) / kMaxTlsRecordPayload;
        if (msg_end_ + records * kTlsRecordHeader > max_) return Status(HelloStatus::kTooLarge);
        hs_ = std::make_unique_for_overwrite<uint8_t[]>(msg_end_ + 8);  // slack for 8-byte moves
        std::memcpy(hs_.get(), head_, 4);
      }
    }
    if (take > 0) {
      // The hello must end with its record: nothing else may follow it there.
      if (take > msg_end_ - filled_) return Status(HelloStatus::kMalformed);
      if (take == 1) {
        hs_[filled_] = *src;  // tiny records: no call per byte
      } else {
        std::memcpy(hs_.get() + filled_, src, take);
      }
      filled_ += take;
    }
    taken_ = avail;
    if (msg_end_ > 0 && filled_ == msg_end_) {
      if (n < record_end) return NeedMore(record_end, max_);
      return Finish(std::span(hs_.get() + 4, msg_end_ - 4), record_end);
    }
    if (n < record_end) {
      // The rest of this record, and what the message still lacks beyond it
      // in one more record at the least.
      size_t beyond = 0;
      if (msg_end_ > 0) {
        size_t missing = msg_end_ - filled_;
        size_t in_record = record_end - n;
        if (missing > in_record) beyond = kTlsRecordHeader + (missing - in_record);
      }
      return NeedMore(record_end + beyond, max_);
    }
    record_ = record_end;
    taken_ = 0;
  }
}

HelloResult HelloParser::Finish(std::span<const uint8_t> body, size_t wire_bytes) {
  HelloResult out;
  out.status = ParseBody(body, out);
  if (out.status != HelloStatus::kOk) {
    out.sni.clear();
    out.alpn.clear();
  }
  out.wire_bytes = wire_bytes;
  return out;
}

HelloResult ParseClientHello(std::span<const uint8_t> data, size_t max_wire_bytes) {
  return HelloParser(max_wire_bytes).Feed(data);
}

}  // namespace cvmgate
