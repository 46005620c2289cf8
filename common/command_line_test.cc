#include "ferry/common/command_line.h"

#include <gtest/gtest.h>

#include <sstream>

#include "ferry/common/error.h"

namespace ferry {
namespace {

// A small program with the shapes the real ones have: one-word and two-word
// commands sharing a first word, positionals, a repeatable option, flags,
// global options.
ProgramSpec Toy() {
  ProgramSpec p;
  p.name = "toy";
  p.summary = "a toy";
  p.description = "Does toy things.";
  p.global_options = {Flag("verbose", "say more")};
  p.commands.push_back({"restore", "--repo DIR --to PATH", "restore a disk", "", {},
                        {Option("repo", "DIR", "the repository").Directories(), Option("to", "PATH", "where").Files(),
                         Option("format", "F", "raw or qcow2").Choices({"raw", "qcow2"})},
                        "Local"});
  p.commands.push_back({"restore disk", "--host H [--wait]", "restore remotely", "", {"POINT", "DISK"},
                        {Option("host", "H", "the host"), Flag("wait", "follow it")}, "Remote"});
  p.commands.push_back({"job show", "", "show a job", "", {"JOB"}, {Flag("json", "as JSON")}, "Remote"});
  p.commands.push_back({"job create", "[NAME] --vm NAME ...", "create a job", "", {"[NAME]"},
                        {Option("vm", "NAME", "a VM").Repeatable(), Flag("json", "as JSON")}, "Remote"});
  p.commands.push_back({"job start", "", "start a job", "", {"JOB"}, {Flag("watch", "follow it")}, "Remote"});
  return p;
}

std::string BadInputOf(const ProgramSpec& p, const std::vector<std::string>& args) {
  try {
    ParseCommandLine(p, args);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "parsed";
  return "";
}

TEST(CommandLine, OptionsAndGlobalOptionsGoAnywhere) {
  ProgramSpec p = Toy();
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--verbose", "restore", "--repo", "/r", "--to", "/x"},
           {"restore", "--repo=/r", "--verbose", "--to", "/x"},
           {"--repo", "/r", "--to", "/x", "restore", "--verbose"}}) {
    ParsedCommandLine line = ParseCommandLine(p, args);
    EXPECT_EQ(line.command->name, "restore");
    EXPECT_EQ(line.options.Get("repo"), "/r");
    EXPECT_EQ(line.options.Get("to"), "/x");
    EXPECT_TRUE(line.options.Has("verbose"));
    EXPECT_TRUE(line.positionals.empty());
  }
}

TEST(CommandLine, TheLongestCommandNameWinsAndTheRestArePositionals) {
  ProgramSpec p = Toy();
  ParsedCommandLine line = ParseCommandLine(p, {"restore", "--host", "h1", "disk", "7", "vda", "--wait"});
  EXPECT_EQ(line.command->name, "restore disk");
  ASSERT_EQ(line.positionals.size(), 2u);
  EXPECT_EQ(line.Positional(0), "7");
  EXPECT_EQ(line.Positional(1), "vda");
  EXPECT_EQ(line.options.Get("host"), "h1");
  // An option's value is never a command word: "disk" here is --to's value.
  EXPECT_EQ(ParseCommandLine(p, {"restore", "--to", "disk", "--repo", "/r"}).command->name, "restore");
  // After "--" every word is positional, even one like an option.
  line = ParseCommandLine(p, {"job", "show", "--", "--odd-name"});
  ASSERT_EQ(line.positionals.size(), 1u);
  EXPECT_EQ(line.Positional(0), "--odd-name");
}

TEST(CommandLine, PositionalsAreCounted) {
  ProgramSpec p = Toy();
  EXPECT_NE(BadInputOf(p, {"job", "show"}).find("missing JOB"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"restore", "disk", "7", "--host", "h"}).find("missing DISK"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"job", "show", "a", "b"}).find("unexpected argument 'b'"), std::string::npos);
  // An optional positional may be left out.
  EXPECT_FALSE(ParseCommandLine(p, {"job", "create", "--vm", "a"}).OptionalPositional(0));
  EXPECT_EQ(ParseCommandLine(p, {"job", "create", "n", "--vm", "a", "--vm", "b"}).options.GetAll("vm"),
            (std::vector<std::string>{"a", "b"}));
}

TEST(CommandLine, MistakesAreNamedWithTheClosestSpelling) {
  ProgramSpec p = Toy();
  EXPECT_NE(BadInputOf(p, {"restroe"}).find("unknown command 'restroe' (did you mean 'restore'?)"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"frobnicate"}).find("unknown command 'frobnicate'; 'toy --help'"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"job", "strat", "x"}).find("unknown action 'strat' for job (did you mean 'start'?); job takes: show, create, start"),
            std::string::npos);
  EXPECT_NE(BadInputOf(p, {"job"}).find("job needs an action: show, create, start"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"restore", "--rpeo", "/r"}).find("unknown option --rpeo (did you mean '--repo'?)"),
            std::string::npos);
  // Each command takes only its own options; another command's is named as such.
  EXPECT_NE(BadInputOf(p, {"job", "show", "1", "--wait"}).find("toy job show takes no option --wait"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {"restore", "--verbose=yes"}).find("option --verbose takes no value"), std::string::npos);
  EXPECT_NE(BadInputOf(p, {}).find("no command given"), std::string::npos);
}

TEST(CommandLine, AProgramWithADefaultCommandTakesItsOptionsAlone) {
  ProgramSpec p;
  p.name = "daemon";
  CommandSpec serve;
  serve.options = {Option("listen", "ADDR", "where"), Flag("tls", "TLS")};
  p.commands.push_back(serve);
  p.commands.push_back({"grant", "--tokens FILE", "grant", "", {}, {Option("tokens", "FILE", "the file")}, ""});
  EXPECT_EQ(ParseCommandLine(p, {"--listen", "a:1", "--tls"}).command->name, "");
  EXPECT_EQ(ParseCommandLine(p, {}).command->name, "");
  EXPECT_EQ(ParseCommandLine(p, {"grant", "--tokens", "t"}).command->name, "grant");
  EXPECT_NE(BadInputOf(p, {"grnat"}).find("unknown command 'grnat' (did you mean 'grant'?)"), std::string::npos);
  // A mistyped option is reported as such, not its value as a command.
  EXPECT_NE(BadInputOf(p, {"--lisen", "a:1"}).find("unknown option --lisen (did you mean '--listen'?)"), std::string::npos);
  std::ostringstream out;
  EXPECT_EQ(AnswerStandardRequests(p, {"--help"}, out), 0);
  EXPECT_NE(out.str().find("--listen ADDR"), std::string::npos) << out.str();
}

TEST(CommandLine, HelpVersionAndGeneratorsAreAnsweredFirst) {
  ProgramSpec p = Toy();
  auto answer = [&](const std::vector<std::string>& args, std::optional<int>* code) {
    std::ostringstream out;
    *code = AnswerStandardRequests(p, args, out);
    return out.str();
  };
  std::optional<int> code;
  std::string text = answer({"restore", "disk", "--help"}, &code);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(text.rfind("usage: toy restore disk POINT DISK --host H [--wait]", 0), 0u) << text;
  EXPECT_NE(text.find("--wait"), std::string::npos);
  EXPECT_NE(text.find("--verbose"), std::string::npos) << "global options are listed";
  EXPECT_EQ(answer({"help", "restore", "disk"}, &code), text);
  // A first word that only begins commands lists them.
  text = answer({"help", "job"}, &code);
  EXPECT_NE(text.find("toy job show JOB"), std::string::npos) << text;
  EXPECT_NE(text.find("toy job start JOB"), std::string::npos) << text;
  text = answer({}, &code);
  EXPECT_EQ(code, 2) << "no arguments: the overview, and the exit code of bad input";
  EXPECT_NE(text.find("Remote:"), std::string::npos) << text;
  EXPECT_NE(text.find("  job create"), std::string::npos) << text;
  EXPECT_EQ(answer({"job", "show", "1", "--version"}, &code).rfind("toy ", 0), 0u);
  EXPECT_EQ(answer({"job", "show", "1"}, &code), "");
  EXPECT_FALSE(code) << "a plain command line is the program's to parse";
  // --help after "--" is a positional.
  EXPECT_FALSE(AnswerStandardRequests(p, {"job", "show", "--", "--help"}, std::cout));
}

TEST(CommandLine, TheManPageHasEveryCommandAndOption) {
  std::string man = ManPage(Toy());
  EXPECT_EQ(man.find(".TH TOY 1 "), man.find(".TH")) << man;
  EXPECT_NE(man.find(".SS \"restore disk\""), std::string::npos);
  EXPECT_NE(man.find(".B \\-\\-wait"), std::string::npos);
  EXPECT_NE(man.find(".SH GLOBAL OPTIONS"), std::string::npos);
  // Lines starting with a dot or quote are escaped (they would be requests).
  ProgramSpec p = Toy();
  p.description = "first line\n.not a request";
  EXPECT_NE(ManPage(p).find("\\&.not a request"), std::string::npos);
}

TEST(CommandLine, TheCompletionScriptKnowsCommandsOptionsAndValues) {
  std::string bash = BashCompletion(Toy());
  EXPECT_NE(bash.find("complete -F _ferry_complete_toy toy"), std::string::npos);
  EXPECT_NE(bash.find("--format) COMPREPLY=($(compgen -W 'raw qcow2'"), std::string::npos) << bash;
  EXPECT_NE(bash.find("--repo) COMPREPLY=($(compgen -d"), std::string::npos);
  EXPECT_NE(bash.find("\" restore disk \"*) command='restore disk' options='--host --wait'"), std::string::npos) << bash;
  // "restore disk" is matched before "restore".
  EXPECT_LT(bash.find("\" restore disk \"*)"), bash.find("\" restore \"*)"));
}

TEST(CommandLine, ContradictoryDefinitionsAreRefused) {
  ProgramSpec p = Toy();
  p.commands.push_back({"other", "", "x", "", {}, {Option("wait", "N", "a valued --wait")}, ""});
  EXPECT_THROW(MarkdownReference(p), Error);
  p = Toy();
  p.commands.push_back(p.commands[0]);
  EXPECT_THROW(MarkdownReference(p), Error);
  EXPECT_NE(MarkdownReference(Toy()).find("### toy restore disk"), std::string::npos);
}

}  // namespace
}  // namespace ferry
