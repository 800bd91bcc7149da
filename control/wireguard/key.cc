// WireGuard keys: base64 and hex text forms, and X25519 through OpenSSL.
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <memory>

#include <absl/strings/escaping.h>
#include <absl/strings/str_cat.h>
#include "control/wireguard/wireguard.h"
#include "dataplane/strings.h"

namespace cvmgate {
namespace {

constexpr size_t kBase64Len = 44;  // 32 bytes: 43 characters and one '='
constexpr char kBase64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};

}  // namespace

absl::StatusOr<WgKey> WgKey::FromBase64(std::string_view text) {
  if (text.size() != kBase64Len || text.back() != '=') {
    return absl::InvalidArgumentError(
        absl::StrCat("a WireGuard key is 44 base64 characters ending in '=' (as `wg genkey` prints it); got ",
                     text.size(), " characters"));
  }
  std::string_view body = text.substr(0, kBase64Len - 1);
  size_t bad = body.find_first_not_of(kBase64Alphabet);
  if (bad != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("a WireGuard key is base64: character ", bad + 1, " is not"));
  }
  // The last character carries 4 bits of key and 2 of padding. Rejecting
  // non-zero padding keeps one spelling per key, so keys compare as text.
  if ((std::string_view(kBase64Alphabet).find(body.back()) & 3) != 0) {
    return absl::InvalidArgumentError(
        "a WireGuard key's base64 is not canonical (its last character before '=' has stray bits)");
  }
  std::string raw;
  if (!absl::Base64Unescape(AbslView(text), &raw) || raw.size() != 32) {
    return absl::InvalidArgumentError("a WireGuard key's base64 does not decode to 32 bytes");
  }
  WgKey key;
  std::copy(raw.begin(), raw.end(), key.bytes.begin());
  return key;
}

std::string WgKey::ToBase64() const {
  return absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

absl::StatusOr<WgKey> WgKey::FromHex(std::string_view text) {
  if (text.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("a WireGuard key in hex is 64 digits; got ", text.size(), " characters"));
  }
  WgKey key;
  for (size_t i = 0; i < 32; ++i) {
    int hi = HexDigit(text[2 * i]), lo = HexDigit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("a WireGuard key in hex has a non-hex character at ", hi < 0 ? 2 * i + 1 : 2 * i + 2));
    }
    key.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

std::string WgKey::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

absl::StatusOr<WgKey> PublicKeyFromPrivate(const WgKey& private_key) {
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(
      EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.bytes.data(), private_key.bytes.size()));
  if (!pkey) return absl::InternalError("OpenSSL refused an X25519 private key (EVP_PKEY_new_raw_private_key)");
  WgKey pub;
  size_t len = pub.bytes.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.bytes.data(), &len) != 1 || len != pub.bytes.size()) {
    return absl::InternalError("OpenSSL could not derive the X25519 public key (EVP_PKEY_get_raw_public_key)");
  }
  return pub;
}

absl::StatusOr<WgKey> GeneratePrivateKey() {
  WgKey key;
  if (RAND_bytes(key.bytes.data(), static_cast<int>(key.bytes.size())) != 1) {
    return absl::UnavailableError("OpenSSL's random generator failed (RAND_bytes): the system has no entropy source");
  }
  // X25519 clamps on use anyway; clamping here makes the stored key the one
  // the kernel reports back, which also clamps.
  key.bytes[0] &= 248;
  key.bytes[31] = static_cast<uint8_t>((key.bytes[31] & 127) | 64);
  return key;
}

}  // namespace cvmgate
