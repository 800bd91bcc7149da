// The one command-line grammar of cvmgate's programs.
#include "control/args.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace cvmgate {
namespace {

ArgKind Kinds(std::string_view name) {
  if (name == "json" || name == "help") return ArgKind::kSwitch;
  if (name == "admin" || name == "ports") return ArgKind::kOption;
  return ArgKind::kUnknown;
}

std::string Error(std::vector<std::string> words) {
  auto a = ParseArgs(words, Kinds);
  return a.ok() ? "ok" : std::string(a.status().message());
}

TEST(Args, OptionsSwitchesAndWords) {
  std::vector<std::string> words = {"--admin=unix:/a", "x", "--ports", "80,443", "--json", "y", "--admin", "tcp:b"};
  auto a = ParseArgs(words, Kinds);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->Get("admin"), "tcp:b") << "the last one given wins";
  EXPECT_EQ(a->Get("ports"), "80,443");
  EXPECT_TRUE(a->Has("json"));
  EXPECT_FALSE(a->Has("help"));
  EXPECT_EQ(a->Get("help", "none"), "none");
  EXPECT_EQ(a->positional, (std::vector<std::string>{"x", "y"}));
  ASSERT_EQ(a->options.size(), 4u);
  EXPECT_EQ(a->options[0].first, "admin") << "options keep their order";
}

TEST(Args, HelpDashDashAndVerbs) {
  std::vector<std::string> words = {"-h", "--", "--json"};
  auto a = ParseArgs(words, Kinds);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->Has("help"));
  EXPECT_FALSE(a->Has("json")) << "after --, words are positional";
  EXPECT_EQ(a->positional, (std::vector<std::string>{"--json"}));

  std::vector<std::string> verb = {"--json", "list", "--bogus", "--admin"};
  auto v = ParseArgs(verb, Kinds, /*stop_at_positional=*/true);
  ASSERT_TRUE(v.ok()) << "a verb's own arguments are its business";
  EXPECT_EQ(v->positional, (std::vector<std::string>{"list", "--bogus", "--admin"}));
}

TEST(Args, ErrorsNameTheFlag) {
  EXPECT_EQ(Error({"--bogus"}), "unknown flag --bogus");
  EXPECT_EQ(Error({"--bogus=1"}), "unknown flag --bogus");
  EXPECT_TRUE(absl::IsNotFound(ParseArgs(std::vector<std::string>{"--x"}, Kinds).status()));
  EXPECT_EQ(Error({"--json=yes"}), "--json takes no value");
  EXPECT_EQ(Error({"--admin"}), "--admin needs a value");
  EXPECT_EQ(Error({"--admin="}), "ok") << "an empty value is a value";
}

}  // namespace
}  // namespace cvmgate
