#include "ferry/coordinator/json_input.h"

#include <gtest/gtest.h>

#include "ferry/coordinator/field_error.h"

namespace ferry::coordinator {
namespace {

std::string FieldOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const FieldError& e) {
    return e.field();
  }
  return "<no error>";
}

TEST(JsonInput, ParsesOnlyObjects) {
  EXPECT_EQ(FieldOf([] { ParseRequestObject("{"); }), "body");
  EXPECT_EQ(FieldOf([] { ParseRequestObject("[1]"); }), "body");
  EXPECT_EQ(ParseRequestObject(R"({"a": 1})").at("a").as_int64(), 1);
}

TEST(JsonInput, RefusesDuplicateKeysAndNulCharactersNamingTheMember) {
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"name": "a", "name": "b"})"); }), "name");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"selection": {"vms": ["a"], "tags": [], "vms": ["b"]}})"); }),
            "selection.vms");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"location": "/tmp/\u0000x"})"); }), "location");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"selection": {"vms": ["ok", 7, "x\u0000"]}})"); }), "selection.vms[2]");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"a\u0000b": 1})"); }), "body");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"retries": {"a\u0000b": 1}})"); }), "retries");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(R"({"list": [{"k": 1}, {"k": 1, "k": 2}]})"); }), "list[1].k");
  // The same key in two objects, and escapes that are not NUL, are fine.
  EXPECT_EQ(ParseRequestObject(R"({"a": {"k": 1}, "b": {"k": "\u0001\n"}})").at("b").at("k").as_string(), "\x01\n");
  EXPECT_EQ(FieldOf([] { ParseRequestObject(std::string(20, '[') + std::string(20, ']')); }), "body");  // too deep
}

TEST(JsonInput, NamesTheFieldOfEveryProblem) {
  boost::json::object o = ParseRequestObject(R"({"name": 5, "slots": "x", "n": 2000, "on": "yes", "tags": ["ok", 3], "extra": 1})");
  FieldReader f(o, "job");
  EXPECT_EQ(FieldOf([&] { f.Name("name", true); }), "job.name");
  EXPECT_EQ(FieldOf([&] { f.Int("slots", true, 1, 10); }), "job.slots");
  EXPECT_EQ(FieldOf([&] { f.Int("n", true, 1, 1024); }), "job.n");
  EXPECT_EQ(FieldOf([&] { f.Bool("on", true); }), "job.on");
  EXPECT_EQ(FieldOf([&] { f.NameList("tags", true); }), "job.tags[1]");
  EXPECT_EQ(FieldOf([&] { f.String("missing", true); }), "job.missing");
  EXPECT_EQ(FieldOf([&] { f.Finish(); }), "job.extra");
}

TEST(JsonInput, AcceptsGoodValues) {
  boost::json::object o = ParseRequestObject(R"({"name": "web-01", "slots": 4, "on": false, "tags": ["a", "b"]})");
  FieldReader f(o, "");
  EXPECT_EQ(*f.Name("name", true), "web-01");
  EXPECT_EQ(*f.Int("slots", true, 1, 8), 4);
  EXPECT_FALSE(*f.Bool("on", true));
  EXPECT_EQ(f.NameList("tags", true)->size(), 2u);
  EXPECT_FALSE(f.Int("absent", false, 0, 1).has_value());
  f.Finish();
}

TEST(JsonInput, RejectsBadNames) {
  EXPECT_EQ(FieldOf([] { CheckName("name", "a/b"); }), "name");
  EXPECT_EQ(FieldOf([] { CheckName("name", ""); }), "name");
  EXPECT_EQ(FieldOf([] { CheckName("name", std::string(129, 'a')); }), "name");
}

}  // namespace
}  // namespace ferry::coordinator
