#include "ferry/common/arguments.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "ferry/common/error.h"

namespace ferry {
namespace {

const std::set<std::string> kValued = {"coordinator", "slots", "tag", "chunk-size", "token"};
const std::set<std::string> kFlags = {"verbose", "tls"};
const std::string kPath = "/etc/ferry/worker.conf";

// The message of the kBadInput error `fn` throws ("" and a failure if none).
std::string BadInput(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

Arguments CommandLine(const std::vector<std::string>& args) { return Arguments(args, kValued, kFlags); }
Arguments Config(const std::string& text) { return Arguments::ParseConfig(text, kPath, kValued, kFlags); }

TEST(Arguments, CommandLineValuesFlagsAndRepeats) {
  Arguments a = CommandLine({"--coordinator", "c:1", "--slots=4", "--tag", "prod", "--tag=db", "--verbose"});
  EXPECT_EQ(a.Get("coordinator"), "c:1");
  EXPECT_EQ(a.GetInt("slots", 1, 64), 4);
  EXPECT_EQ(a.GetAll("tag"), (std::vector<std::string>{"prod", "db"}));
  EXPECT_TRUE(a.Has("verbose"));
  EXPECT_FALSE(a.Has("tls"));
  EXPECT_EQ(a.Get("token"), std::nullopt);
  EXPECT_TRUE(a.GetAll("token").empty());
}

TEST(Arguments, CommandLineErrorsNameTheOption) {
  EXPECT_EQ(BadInput([] { CommandLine({"--frobnicate"}); }), "unknown option --frobnicate");
  EXPECT_EQ(BadInput([] { CommandLine({"--slots"}); }), "option --slots needs a value");
  EXPECT_EQ(BadInput([] { CommandLine({"--verbose=yes"}); }), "option --verbose takes no value");
  EXPECT_EQ(BadInput([] { CommandLine({"slots"}); }), "unexpected argument 'slots'");
  EXPECT_EQ(BadInput([] { CommandLine({"--slots", "1", "--slots", "2"}).Get("slots"); }),
            "option --slots given more than once");
  EXPECT_EQ(BadInput([] { CommandLine({}).Require("coordinator"); }), "missing required option --coordinator");
  EXPECT_EQ(BadInput([] { CommandLine({"--slots", "0"}).GetInt("slots", 1, 64); }),
            "option --slots: '0' is not an integer from 1 to 64");
  EXPECT_EQ(BadInput([] { CommandLine({"--chunk-size", "4X"}).GetSize("chunk-size"); }),
            "option --chunk-size: '4X' is not a size (e.g. 4M, 512K, 1048576)");
}

TEST(Arguments, Sizes) {
  EXPECT_EQ(CommandLine({"--chunk-size", "4M"}).GetSize("chunk-size"), 4u << 20);
  EXPECT_EQ(CommandLine({"--chunk-size", "512K"}).GetSize("chunk-size"), 512u << 10);
  EXPECT_EQ(CommandLine({"--chunk-size", "1G"}).GetSize("chunk-size"), 1ull << 30);
  EXPECT_EQ(CommandLine({"--chunk-size", "1048576"}).GetSize("chunk-size"), 1048576u);
  EXPECT_NE(BadInput([] { CommandLine({"--chunk-size", "-1M"}).GetSize("chunk-size"); }), "");
}

TEST(Arguments, Durations) {
  Arguments a({"--a", "500ms", "--b", "90s", "--c", "30m", "--d", "24h", "--e", "7d", "--f", "12"},
              {"a", "b", "c", "d", "e", "f", "g"}, {});
  EXPECT_EQ(a.GetDuration("a")->count(), 500);
  EXPECT_EQ(a.GetDuration("b")->count(), 90'000);
  EXPECT_EQ(a.GetDuration("c")->count(), 1'800'000);
  EXPECT_EQ(a.GetDuration("d")->count(), 86'400'000);
  EXPECT_EQ(a.GetDuration("e")->count(), 7 * 86'400'000LL);
  EXPECT_EQ(a.GetDuration("f")->count(), 12'000);
  EXPECT_FALSE(a.GetDuration("g").has_value());
  for (const char* bad : {"0", "-5s", "5 s", "5x", "s", "ms", ""}) {
    Arguments b({"--t", bad}, {"t"}, {});
    try {
      b.GetDuration("t");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
      EXPECT_NE(std::string(e.what()).find("option --t: '" + std::string(bad) + "' is not a duration"), std::string::npos)
          << e.what();
    }
  }
}

TEST(ArgumentsConfig, ParsesLinesCommentsAndWhitespace) {
  Arguments a = Config(
      "# Ferry worker\n"
      "\n"
      "  coordinator   =  coord.example:8081  \n"
      "slots=3\r\n"
      "\t# indented comment\n"
      "tag = prod\n"
      "tag = db\n"
      "token = fy_a#b\n"  // '#' inside a value is part of it
      "   verbose   \n"
      "chunk-size = 4M");  // no final newline
  EXPECT_EQ(a.Get("coordinator"), "coord.example:8081");
  EXPECT_EQ(a.GetInt("slots", 1, 64), 3);
  EXPECT_EQ(a.GetAll("tag"), (std::vector<std::string>{"prod", "db"}));
  EXPECT_EQ(a.Get("token"), "fy_a#b");
  EXPECT_TRUE(a.Has("verbose"));
  EXPECT_FALSE(a.Has("tls"));
  EXPECT_EQ(a.GetSize("chunk-size"), 4u << 20);
  EXPECT_TRUE(Config("").GetAll("tag").empty());
}

TEST(ArgumentsConfig, ErrorsNameTheFileAndLine) {
  EXPECT_EQ(BadInput([] { Config("# c\n\nslots = 2\n\n\n\nfrobnicate = 1\n"); }),
            "/etc/ferry/worker.conf line 7: unknown option 'frobnicate'");
  EXPECT_EQ(BadInput([] { Config("tag = a\n\nslots\n"); }), "/etc/ferry/worker.conf line 3: option 'slots' needs a value");
  EXPECT_EQ(BadInput([] { Config("slots =   \n"); }), "/etc/ferry/worker.conf line 1: option 'slots' needs a value");
  EXPECT_EQ(BadInput([] { Config("verbose = yes\n"); }),
            "/etc/ferry/worker.conf line 1: option 'verbose' takes no value (a flag: write its name alone)");
  EXPECT_EQ(BadInput([] { Config("\n= 3\n"); }),
            "/etc/ferry/worker.conf line 2: expected 'name = value', or a flag's name");
  EXPECT_EQ(BadInput([] { Config("--slots = 3\n"); }), "/etc/ferry/worker.conf line 1: write 'slots', without '--'");
  EXPECT_EQ(BadInput([] { Config("slots = 1\ntag = x\nslots = 2\n").Get("slots"); }),
            "/etc/ferry/worker.conf line 3: option 'slots' given more than once (also on line 1)");
  EXPECT_EQ(BadInput([] { Config("tag = x\nslots = many\n").GetInt("slots", 1, 64); }),
            "/etc/ferry/worker.conf line 2: option 'slots': 'many' is not an integer from 1 to 64");
  EXPECT_EQ(BadInput([] { Config("chunk-size = 4X\n").GetSize("chunk-size"); }),
            "/etc/ferry/worker.conf line 1: option 'chunk-size': '4X' is not a size (e.g. 4M, 512K, 1048576)");
  EXPECT_EQ(BadInput([] { Config("slots = 1\n").Require("coordinator"); }),
            "missing required option --coordinator (or 'coordinator = ...' in /etc/ferry/worker.conf)");
}

TEST(ArgumentsLayered, CommandLineWinsForSingleValues) {
  Arguments a = Arguments::Layered(Config("coordinator = file:1\nslots = 3\n"), CommandLine({"--slots", "8"}));
  EXPECT_EQ(a.Get("coordinator"), "file:1");  // only in the file
  EXPECT_EQ(a.GetInt("slots", 1, 64), 8);     // both: the command line's, not "given more than once"
  // A value that came from the command line is reported as a flag.
  Arguments b = Arguments::Layered(Config("slots = 3\n"), CommandLine({"--slots", "0"}));
  EXPECT_EQ(BadInput([&] { b.GetInt("slots", 1, 64); }), "option --slots: '0' is not an integer from 1 to 64");
}

TEST(ArgumentsLayered, CommandLineListReplacesTheFilesList) {
  Arguments file = Config("tag = prod\ntag = db\n");
  EXPECT_EQ(Arguments::Layered(file, CommandLine({"--tag", "test"})).GetAll("tag"),
            (std::vector<std::string>{"test"}));
  EXPECT_EQ(Arguments::Layered(file, CommandLine({"--tag", "a", "--tag", "b"})).GetAll("tag"),
            (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Arguments::Layered(file, CommandLine({"--slots", "2"})).GetAll("tag"),
            (std::vector<std::string>{"prod", "db"}));  // none on the command line: the file's
}

TEST(ArgumentsLayered, FlagsFromEitherCount) {
  EXPECT_TRUE(Arguments::Layered(Config("verbose\n"), CommandLine({})).Has("verbose"));
  EXPECT_TRUE(Arguments::Layered(Config(""), CommandLine({"--verbose"})).Has("verbose"));
  Arguments both = Arguments::Layered(Config("verbose\ntls\n"), CommandLine({"--verbose"}));
  EXPECT_TRUE(both.Has("verbose"));
  EXPECT_TRUE(both.Has("tls"));
  EXPECT_FALSE(Arguments::Layered(Config("tls\n"), CommandLine({})).Has("verbose"));
}

class ArgumentsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-arguments-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& text) {
    std::string path = (dir_ / "worker.conf").string();
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(ArgumentsFileTest, FileUnderCommandLine) {
  std::string path = Write("coordinator = file:1\nslots = 3\ntag = prod\nverbose\n");
  Arguments a = Arguments::FromFileAndCommandLine(path, {"--slots", "5", "--tls"}, kValued, kFlags);
  EXPECT_EQ(a.Get("coordinator"), "file:1");
  EXPECT_EQ(a.GetInt("slots", 1, 64), 5);
  EXPECT_EQ(a.GetAll("tag"), (std::vector<std::string>{"prod"}));
  EXPECT_TRUE(a.Has("verbose"));
  EXPECT_TRUE(a.Has("tls"));
}

TEST_F(ArgumentsFileTest, ErrorsNameTheRealFile) {
  std::string path = Write("slots = 3\nfrobnicate\n");
  EXPECT_EQ(BadInput([&] { Arguments::FromFileAndCommandLine(path, {}, kValued, kFlags); }),
            path + " line 2: unknown option 'frobnicate'");
  // The command line's own errors keep their message.
  EXPECT_EQ(BadInput([&] { Arguments::FromFileAndCommandLine(path, {"--x"}, kValued, kFlags); }),
            "unknown option --x");
}

TEST_F(ArgumentsFileTest, MissingFileIsNotFoundNamingIt) {
  std::string path = (dir_ / "absent.conf").string();
  try {
    Arguments::ReadConfigFile(path, kValued, kFlags);
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("reading configuration file " + path), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ferry
