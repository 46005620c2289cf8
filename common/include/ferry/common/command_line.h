// What a program's commands and options are, as data, and everything made
// from it: the parse of a command line (into ferry::Arguments, the one
// option parser), `--help` for the program and for each command, `help CMD`,
// the man page, and the bash completion script. Every Ferry program
// (`ferry`, `ferry-coordinator`, `ferry-worker`, `ferry-repository`)
// describes itself once as a ProgramSpec; nothing about its options is
// written twice. docs/cli.md, "The command-line framework", says why this
// rather than CLI11.
//
// A command line is: command words, options and positional arguments in any
// order. The command is the longest command name its words begin with
// ("restore disk" before "restore"); the words after it are its positional
// arguments. Options are the command's and the program's global ones,
// `--name value`, `--name=value` or `--flag`; `--` ends the options.
//
//   ferry --verbose backup --repo /r --qmp /run/vm.qmp
//   ferry job start nightly --coordinator http://c:8080 --watch
#pragma once

#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "ferry/common/arguments.h"

namespace ferry {

// What bash completes an option's value with.
enum class ValueKind { kText, kFile, kDirectory, kChoice };

struct OptionSpec {
  std::string name;         // without "--"
  std::string placeholder;  // the value's name in usage ("DIR"); empty for a flag
  std::string help;         // one sentence or a few
  bool repeatable = false;
  ValueKind kind = ValueKind::kText;
  std::vector<std::string> choices;  // kChoice

  bool is_flag() const { return placeholder.empty(); }
  OptionSpec Repeatable() const;
  OptionSpec Files() const;
  OptionSpec Directories() const;
  OptionSpec Choices(std::vector<std::string> values) const;
};

// A flag (--name) and an option taking a value (--name PLACEHOLDER).
OptionSpec Flag(std::string name, std::string help);
OptionSpec Option(std::string name, std::string placeholder, std::string help);
// --verbose and --quiet, as every program that logs takes them.
std::vector<OptionSpec> VerbosityFlags();

struct CommandSpec {
  std::string name;      // "backup", "job create"; "" for the program's default command
  std::string synopsis;  // after the name in usage: "--repo DIR (--qmp SOCKET | --libvirt URI --vm NAME) ..."
  std::string summary;   // one line, for the program's overview
  std::string details;   // more paragraphs for `--help` and the man page ("" if none)
  // Positional arguments by name ("JOB", "POINT"). "[NAME]" is optional and
  // "NAME..." takes any number; both only last.
  std::vector<std::string> positionals;
  std::vector<OptionSpec> options;
  std::string group;     // the overview's heading over this command
  bool hidden = false;   // internal: parsed, never listed
};

struct ProgramSpec {
  std::string name;         // "ferry"
  std::string summary;      // the man page's NAME line
  std::string description;  // paragraphs after the overview's usage line
  int man_section = 1;
  std::vector<OptionSpec> global_options;  // taken by every command, anywhere
  std::vector<CommandSpec> commands;
  std::string footer;  // closing paragraphs: environment, exit codes, files

  const CommandSpec* Find(const std::string& command_name) const;
};

// One parsed command line.
struct ParsedCommandLine {
  const CommandSpec* command = nullptr;
  Arguments options;  // the command's and the global options
  std::vector<std::string> positionals;

  // Positional `i`; present for every required positional of the spec.
  const std::string& Positional(size_t i) const { return positionals.at(i); }
  std::optional<std::string> OptionalPositional(size_t i) const;
};

// Parses `args` (argv without argv[0]). Throws kBadInput for an unknown
// command ("unknown command 'bakup' (did you mean 'backup'?)"; under a known
// first word "unknown action 'strat' for job (did you mean 'start'?); job
// takes: ..."), an unknown or malformed option, a missing or an unexpected
// positional argument.
ParsedCommandLine ParseCommandLine(const ProgramSpec& program, const std::vector<std::string>& args);

// The command `args` name, or nullptr (never throws): for the "ferry
// COMMAND: error: ..." prefix of a parse error.
const CommandSpec* FindCommand(const ProgramSpec& program, const std::vector<std::string>& args);

// The option names of `command` (with the program's global options) that take
// a value, and those that do not: for Arguments::ReadConfigFile.
std::set<std::string> ValuedOptions(const ProgramSpec& program, const CommandSpec& command);
std::set<std::string> FlagOptions(const ProgramSpec& program, const CommandSpec& command);

// The requests every program answers the same way, before its own parse:
// `--help`/`-h` anywhere (the command's help, or the overview), `help
// [WORDS...]`, `--version`, `--generate-man`, `--generate-bash-completion`
// and `--generate-markdown` (for the build and the docs). Returns the exit
// code when it answered one (output on `out`), nullopt otherwise. With no
// arguments at all and no default command, prints the overview and returns 2.
std::optional<int> AnswerStandardRequests(const ProgramSpec& program, const std::vector<std::string>& args,
                                          std::ostream& out);

std::string OverviewText(const ProgramSpec& program);
std::string CommandHelpText(const ProgramSpec& program, const CommandSpec& command);
// Help for `help WORDS...`: a command's help, or for a first word that only
// begins commands ("job"), the list of them. kBadInput for unknown words.
std::string HelpFor(const ProgramSpec& program, const std::vector<std::string>& words);
std::string ManPage(const ProgramSpec& program);
std::string BashCompletion(const ProgramSpec& program);
// The command reference in Markdown (docs/cli-reference.md is made of it).
// Checks the definitions first (CheckProgramSpec).
std::string MarkdownReference(const ProgramSpec& program);
// Definitions that contradict themselves are a programming error (kInternal):
// an option that is a flag in one command and takes a value in another (the
// parse could not tell where a command's words are), a command defined twice,
// an option listed twice in one command. The cli.help test runs it for every
// program, through --generate-markdown.
void CheckProgramSpec(const ProgramSpec& program);

}  // namespace ferry
