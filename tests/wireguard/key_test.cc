// Unit tests of WireGuard keys: base64 and hex parsing, and X25519 against RFC 7748's test vector.
#include <gtest/gtest.h>

#include <string>

#include "control/wireguard/wireguard.h"

namespace cvmgate {
namespace {

WgKey KeyOfHex(const std::string& hex) {
  auto k = WgKey::FromHex(hex);
  EXPECT_TRUE(k.ok()) << k.status();
  return k.value_or(WgKey{});
}

TEST(WgKey, Base64RoundTripsAWgGenkeyKey) {
  const std::string text = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
  auto k = WgKey::FromBase64(text);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->bytes[0], 0xc8);
  EXPECT_EQ(k->bytes[31], 0x69);
  EXPECT_EQ(k->ToBase64(), text);
}

TEST(WgKey, Base64IsExactly32Bytes) {
  auto zero = WgKey::FromBase64(std::string(43, 'A') + "=");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(*zero, WgKey{});
  auto ones = WgKey::FromBase64(std::string(42, '/') + "8=");
  ASSERT_TRUE(ones.ok()) << ones.status();
  for (uint8_t b : ones->bytes) EXPECT_EQ(b, 0xff);
}

TEST(WgKey, Base64RefusesBadLengthCharactersAndPadding) {
  struct Case {
    std::string text;
    std::string message;
  };
  const std::string good = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
  std::vector<Case> cases = {
      {"", "44 base64 characters"},
      {good.substr(0, 43), "44 base64 characters"},                            // no padding
      {good + "A", "got 45 characters"},                                       // too long
      {"A" + good.substr(0, 43), "ending in '='"},                             // 44 but no '='
      {std::string(42, 'A') + "==", "character 43 is not"},                    // 31 bytes padded as 32
      {"yAnz5TF-lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", "character 8 is not"},  // URL-safe alphabet
      {"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk!", "ending in '='"},
      {" AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "character 1 is not"},
      {std::string(42, 'A') + "B=", "not canonical"},  // stray low bits
  };
  for (const auto& c : cases) {
    auto k = WgKey::FromBase64(c.text);
    ASSERT_FALSE(k.ok()) << c.text;
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(std::string(k.status().message()).find(c.message), std::string::npos)
        << c.text << " -> " << k.status().message();
  }
}

TEST(WgKey, HexRoundTripsAndAcceptsUpperCase) {
  const std::string hex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
  WgKey k = KeyOfHex(hex);
  EXPECT_EQ(k.bytes[0], 0x77);
  EXPECT_EQ(k.ToHex(), hex);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  EXPECT_EQ(KeyOfHex(upper), k);
}

TEST(WgKey, HexRefusesBadLengthAndCharacters) {
  std::string hex(64, '0');
  EXPECT_FALSE(WgKey::FromHex(hex.substr(1)).ok());
  EXPECT_FALSE(WgKey::FromHex(hex + "0").ok());
  EXPECT_FALSE(WgKey::FromHex("").ok());
  std::string bad = hex;
  bad[17] = 'g';
  auto k = WgKey::FromHex(bad);
  ASSERT_FALSE(k.ok());
  EXPECT_NE(std::string(k.status().message()).find("at 18"), std::string::npos) << k.status();
}

// RFC 7748, section 6.1: Alice's and Bob's X25519 key pairs.
TEST(X25519, PublicFromPrivateMatchesRfc7748) {
  auto alice = PublicKeyFromPrivate(KeyOfHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->ToHex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  auto bob = PublicKeyFromPrivate(KeyOfHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ(bob->ToHex(), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
}

TEST(X25519, GeneratedKeysAreClampedAndDistinct) {
  auto a = GeneratePrivateKey();
  auto b = GeneratePrivateKey();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(a->bytes[0] & 7, 0);
  EXPECT_EQ(a->bytes[31] & 0xc0, 0x40);
  EXPECT_TRUE(PublicKeyFromPrivate(*a).ok());
}

}  // namespace
}  // namespace cvmgate
