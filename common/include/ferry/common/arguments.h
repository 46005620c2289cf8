// Ferry's one option parser, for every program: "--name value",
// "--name=value" and "--flag" on the command line, repeatable options, and a
// clear error (kBadInput) naming the option for anything unknown, missing or
// malformed.
//
// A daemon configured by a file takes the same options there, one a line:
//
//   # /etc/ferry/worker.conf
//   coordinator = coord.example:8081
//   tag = prod          <- a repeatable option: one line per value
//   tag = db
//   verbose             <- a flag: its bare name
//
// Names are the flags' names without "--"; whitespace around names and values
// is trimmed; blank lines and lines whose first non-blank character is '#'
// are ignored (a '#' later in a line belongs to the value, so a password or
// URL may hold one). Errors name the file and line:
// "/etc/ferry/worker.conf line 7: unknown option 'frobnicate'".
//
// Layering (Layered, FromFileAndCommandLine): an option the command line
// gives replaces everything the file gave it. So a single-valued option takes
// the command line's value, a repeatable one (GetAll) the command line's list
// if it gives any, else the file's, and a flag is set if either sets it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

class Arguments {
 public:
  Arguments() = default;  // no options
  // A command line. `valued`: options that take a value; `flags`: options
  // that do not. Throws kBadInput for unknown options, missing values, stray
  // words ("unknown option --x", "option --x needs a value").
  Arguments(const std::vector<std::string>& args, const std::set<std::string>& valued,
            const std::set<std::string>& flags);

  // A configuration file's text (format above); `path` names it in messages.
  static Arguments ParseConfig(std::string_view text, const std::string& path,
                               const std::set<std::string>& valued, const std::set<std::string>& flags);
  // Reads and parses a configuration file; an unreadable file throws the
  // read's error (kNotFound, kEnvironment) naming it.
  static Arguments ReadConfigFile(const std::string& path, const std::set<std::string>& valued,
                                  const std::set<std::string>& flags);
  // `file` under `command_line`: see "Layering" above.
  static Arguments Layered(Arguments file, const Arguments& command_line);
  // ReadConfigFile(config_path) under the command line `args`.
  static Arguments FromFileAndCommandLine(const std::string& config_path, const std::vector<std::string>& args,
                                          const std::set<std::string>& valued,
                                          const std::set<std::string>& flags);

  bool Has(const std::string& name) const;
  // The option's one value; kBadInput if it was given more than once.
  std::optional<std::string> Get(const std::string& name) const;
  // Get, and kBadInput if absent or empty.
  std::string Require(const std::string& name) const;
  // Every value of a repeatable option, in the order given.
  std::vector<std::string> GetAll(const std::string& name) const;
  // Sizes like 4M, 512K, 1G, or plain bytes. Throws kBadInput naming the option.
  std::optional<uint64_t> GetSize(const std::string& name) const;
  std::optional<int64_t> GetInt(const std::string& name, int64_t min, int64_t max) const;
  // Durations like 500ms, 90s, 30m, 24h, 7d, or plain seconds; more than zero.
  std::optional<std::chrono::milliseconds> GetDuration(const std::string& name) const;

 private:
  struct Value {
    std::string text;
    int line = 0;  // in config_path_; 0: from the command line
  };
  // "option --name" for a command-line value, "PATH line N: option 'name'"
  // for one from the file: how an error about `value` begins.
  std::string Describe(const std::string& name, const Value& value) const;
  const Value* GetValue(const std::string& name) const;

  std::multimap<std::string, Value> values_;
  std::string config_path_;  // the file values with a line came from; "" if none
};

// For a mistyped command, option or action: " (did you mean 'backup'?)" when
// one of `known` is within two edits of `typed` (the closest; letters
// swapped count as one edit), else "".
std::string DidYouMean(const std::string& typed, const std::vector<std::string>& known);

}  // namespace ferry
