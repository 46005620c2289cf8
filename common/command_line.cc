#include "ferry/common/command_line.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "ferry/common/error.h"
#include "ferry/common/version.h"

namespace ferry {

OptionSpec OptionSpec::Repeatable() const {
  OptionSpec o = *this;
  o.repeatable = true;
  return o;
}
OptionSpec OptionSpec::Files() const {
  OptionSpec o = *this;
  o.kind = ValueKind::kFile;
  return o;
}
OptionSpec OptionSpec::Directories() const {
  OptionSpec o = *this;
  o.kind = ValueKind::kDirectory;
  return o;
}
OptionSpec OptionSpec::Choices(std::vector<std::string> values) const {
  OptionSpec o = *this;
  o.kind = ValueKind::kChoice;
  o.choices = std::move(values);
  return o;
}

OptionSpec Flag(std::string name, std::string help) {
  OptionSpec o;
  o.name = std::move(name);
  o.help = std::move(help);
  return o;
}

OptionSpec Option(std::string name, std::string placeholder, std::string help) {
  OptionSpec o;
  o.name = std::move(name);
  o.placeholder = std::move(placeholder);
  o.help = std::move(help);
  return o;
}

std::vector<OptionSpec> VerbosityFlags() {
  return {Flag("verbose", "log more, on stderr"), Flag("quiet", "log only warnings and errors")};
}

const CommandSpec* ProgramSpec::Find(const std::string& command_name) const {
  for (const auto& c : commands)
    if (c.name == command_name) return &c;
  return nullptr;
}

std::optional<std::string> ParsedCommandLine::OptionalPositional(size_t i) const {
  if (i < positionals.size()) return positionals[i];
  return std::nullopt;
}

namespace {

Error Bad(const std::string& message) { return Error(ErrorKind::kBadInput, message); }

std::vector<std::string> Words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// The options `command` takes: its own, then the program's global ones.
std::vector<const OptionSpec*> OptionsOf(const ProgramSpec& program, const CommandSpec& command) {
  std::vector<const OptionSpec*> out;
  for (const auto& o : command.options) out.push_back(&o);
  for (const auto& o : program.global_options) out.push_back(&o);
  return out;
}

bool IsOptionWord(const std::string& a) { return a.size() > 2 && a.starts_with("--"); }

std::string OptionName(const std::string& a) {
  std::string name = a.substr(2);
  if (auto eq = name.find('='); eq != std::string::npos) name.resize(eq);
  return name;
}

// The words of `args` that are neither options nor their values, with their
// indexes; `valued`: the option names that take a value.
std::vector<std::pair<size_t, std::string>> NonOptionWords(const std::vector<std::string>& args,
                                                          const std::set<std::string>& valued) {
  std::vector<std::pair<size_t, std::string>> words;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      for (size_t j = i + 1; j < args.size(); ++j) words.emplace_back(j, args[j]);
      break;
    }
    if (IsOptionWord(a)) {
      if (a.find('=') == std::string::npos && valued.count(OptionName(a))) ++i;
      continue;
    }
    words.emplace_back(i, a);
  }
  return words;
}

std::set<std::string> AllValued(const ProgramSpec& program) {
  std::set<std::string> valued;
  for (const auto& o : program.global_options)
    if (!o.is_flag()) valued.insert(o.name);
  for (const auto& c : program.commands)
    for (const auto& o : c.options)
      if (!o.is_flag()) valued.insert(o.name);
  return valued;
}

bool IsOptionOfProgram(const ProgramSpec& program, const std::string& name) {
  for (const auto& c : program.commands)
    for (const auto& o : c.options)
      if (o.name == name) return true;
  return false;
}

// The longest command whose name's words begin `words`, and how many words
// that name has; nullptr if none.
const CommandSpec* LongestMatch(const ProgramSpec& program, const std::vector<std::string>& words, size_t* used) {
  const CommandSpec* best = nullptr;
  size_t best_words = 0;
  for (const auto& c : program.commands) {
    std::vector<std::string> name = Words(c.name);
    if (name.empty() || name.size() > words.size() || name.size() <= best_words) continue;
    if (std::equal(name.begin(), name.end(), words.begin())) best = &c, best_words = name.size();
  }
  *used = best_words;
  return best;
}

const CommandSpec* DefaultCommand(const ProgramSpec& program) { return program.Find(""); }

std::vector<std::string> VisibleFirstWords(const ProgramSpec& program) {
  std::vector<std::string> out;
  for (const auto& c : program.commands) {
    if (c.hidden || c.name.empty()) continue;
    std::string first = Words(c.name)[0];
    if (std::find(out.begin(), out.end(), first) == out.end()) out.push_back(first);
  }
  return out;
}

// The second words of the visible commands named "FIRST ...".
std::vector<std::string> ActionsOf(const ProgramSpec& program, const std::string& first) {
  std::vector<std::string> out;
  for (const auto& c : program.commands) {
    std::vector<std::string> w = Words(c.name);
    if (!c.hidden && w.size() >= 2 && w[0] == first) out.push_back(w[1]);
  }
  return out;
}

std::string Joined(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : separator) + s;
  return out;
}

// The command `words` name, or a kBadInput error saying what is wrong.
const CommandSpec& ResolveCommand(const ProgramSpec& program, const std::vector<std::string>& words,
                                  size_t* used) {
  if (const CommandSpec* c = LongestMatch(program, words, used)) return *c;
  // The default command's stray words are reported after its options
  // (ParseCommandLine): a mistyped option's value is no command.
  if (const CommandSpec* fallback = DefaultCommand(program)) {
    *used = 0;
    return *fallback;
  }
  const std::string overview = "'" + program.name + " --help' lists the commands";
  if (words.empty()) throw Bad("no command given; " + overview);
  std::vector<std::string> actions = ActionsOf(program, words[0]);
  if (!actions.empty()) {
    if (words.size() == 1) throw Bad(words[0] + " needs an action: " + Joined(actions, ", "));
    throw Bad("unknown action '" + words[1] + "' for " + words[0] + DidYouMean(words[1], actions) + "; " +
              words[0] + " takes: " + Joined(actions, ", "));
  }
  throw Bad("unknown command '" + words[0] + "'" + DidYouMean(words[0], VisibleFirstWords(program)) + "; " +
            overview);
}

size_t RequiredPositionals(const CommandSpec& c) {
  size_t n = 0;
  for (const auto& p : c.positionals)
    if (!p.starts_with("[") && !p.ends_with("...")) ++n;
  return n;
}

bool TakesAnyNumber(const CommandSpec& c) { return !c.positionals.empty() && c.positionals.back().ends_with("..."); }

std::string CommandUsage(const ProgramSpec& program, const CommandSpec& c) {
  std::string line = program.name;
  if (!c.name.empty()) line += " " + c.name;
  for (const auto& p : c.positionals) line += " " + p;
  if (!c.synopsis.empty()) line += " " + c.synopsis;
  return line;
}

// `text` as lines of at most `width` characters, each after `indent` spaces
// but the first, which continues a line `first_used` characters long; paragraphs (blank lines)
// and lines starting with spaces (examples) are kept as they are.
std::string Wrap(const std::string& text, size_t indent, size_t first_used, size_t width = 79) {
  std::string out;
  size_t column = first_used;
  bool line_start = true;
  std::istringstream lines(text);
  bool first_line = true;
  for (std::string line; std::getline(lines, line);) {
    if (!first_line && (line.empty() || line.starts_with(" "))) {
      out += "\n";
      if (line.empty()) {
        out += "\n";
        column = 0;
        line_start = true;
        continue;
      }
      out += std::string(indent, ' ') + line;
      column = indent + line.size();
      line_start = false;
      // A literal line ends its own line.
      out += "\n";
      column = 0;
      line_start = true;
      continue;
    }
    first_line = false;
    for (const auto& word : Words(line)) {
      if (!line_start && column + 1 + word.size() > width) {
        out += "\n";
        column = 0;
        line_start = true;
      }
      if (line_start) {
        // Every line but the first (which starts at first_used) is indented.
        if (!out.empty() && column < indent) out += std::string(indent - column, ' '), column = indent;
        out += word;
        column += word.size();
        line_start = false;
      } else {
        out += " " + word;
        column += 1 + word.size();
      }
    }
  }
  if (!out.empty() && out.back() != '\n') out += "\n";
  return out;
}

std::string OptionLabel(const OptionSpec& o) {
  std::string label = "--" + o.name;
  if (!o.is_flag()) label += " " + o.placeholder;
  if (o.repeatable) label += " ...";
  return label;
}

std::string OptionTable(const std::vector<const OptionSpec*>& options) {
  constexpr size_t kColumn = 30;
  std::string out;
  for (const OptionSpec* o : options) {
    std::string label = "  " + OptionLabel(*o);
    if (label.size() + 2 > kColumn) {
      out += label + "\n" + std::string(kColumn, ' ') + Wrap(o->help, kColumn, kColumn);
    } else {
      out += label + std::string(kColumn - label.size(), ' ');
      out += Wrap(o->help, kColumn, kColumn);
    }
  }
  return out;
}

std::string RoffEscape(const std::string& text) {
  std::string out;
  bool line_start = true;
  for (char c : text) {
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    if (c == '\\') out += "\\e";
    else if (c == '-') out += "\\-";
    else out += c;
    line_start = c == '\n';
  }
  return out;
}

// Paragraphs of `text` as roff: blank lines become .PP, indented lines are
// kept verbatim in .nf/.fi.
std::string RoffParagraphs(const std::string& text) {
  std::string out;
  std::istringstream lines(text);
  bool literal = false;
  for (std::string line; std::getline(lines, line);) {
    bool indented = line.starts_with("  ");
    if (indented && !literal) out += ".nf\n", literal = true;
    if (!indented && literal) out += ".fi\n", literal = false;
    if (line.empty()) out += ".PP\n";
    else out += RoffEscape(line) + "\n";
  }
  if (literal) out += ".fi\n";
  return out;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string ShellWords(const std::vector<std::string>& words) { return Joined(words, " "); }

}  // namespace

std::set<std::string> ValuedOptions(const ProgramSpec& program, const CommandSpec& command) {
  std::set<std::string> out;
  for (const OptionSpec* o : OptionsOf(program, command))
    if (!o->is_flag()) out.insert(o->name);
  return out;
}

std::set<std::string> FlagOptions(const ProgramSpec& program, const CommandSpec& command) {
  std::set<std::string> out;
  for (const OptionSpec* o : OptionsOf(program, command))
    if (o->is_flag()) out.insert(o->name);
  return out;
}

const CommandSpec* FindCommand(const ProgramSpec& program, const std::vector<std::string>& args) {
  std::vector<std::string> words;
  for (const auto& [_, w] : NonOptionWords(args, AllValued(program))) words.push_back(w);
  size_t used = 0;
  if (const CommandSpec* c = LongestMatch(program, words, &used)) return c;
  return nullptr;
}

ParsedCommandLine ParseCommandLine(const ProgramSpec& program, const std::vector<std::string>& args) {
  std::vector<std::pair<size_t, std::string>> found = NonOptionWords(args, AllValued(program));
  std::vector<std::string> words;
  for (const auto& [_, w] : found) words.push_back(w);
  size_t used = 0;
  const CommandSpec& command = ResolveCommand(program, words, &used);

  ParsedCommandLine out;
  out.command = &command;
  std::set<size_t> command_words;
  for (size_t i = 0; i < used; ++i) command_words.insert(found[i].first);
  std::vector<std::string> option_args;
  const std::set<std::string> valued = ValuedOptions(program, command);
  for (size_t i = 0; i < args.size(); ++i) {
    if (command_words.count(i)) continue;
    const std::string& a = args[i];
    if (a == "--") {
      out.positionals.insert(out.positionals.end(), args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (IsOptionWord(a)) {
      option_args.push_back(a);
      if (a.find('=') == std::string::npos && valued.count(OptionName(a)) && i + 1 < args.size()) {
        option_args.push_back(args[++i]);
      }
      continue;
    }
    out.positionals.push_back(a);
  }
  // An option of another command: say so, rather than only "unknown".
  const std::set<std::string> flags = FlagOptions(program, command);
  for (const std::string& a : option_args) {
    if (!IsOptionWord(a)) continue;
    const std::string name = OptionName(a);
    if (!valued.count(name) && !flags.count(name) && IsOptionOfProgram(program, name)) {
      const std::string full = program.name + (command.name.empty() ? "" : " " + command.name);
      throw Bad(full + " takes no option --" + name + "; see '" + full + " --help'");
    }
  }
  out.options = Arguments(option_args, valued, flags);
  const std::string usage = CommandUsage(program, command);
  if (out.positionals.size() < RequiredPositionals(command)) {
    throw Bad("missing " + command.positionals[out.positionals.size()] + " (usage: " + usage.substr(0, 100) +
              (usage.size() > 100 ? " ..." : "") + ")");
  }
  if (command.name.empty() && out.positionals.size() > command.positionals.size() &&
      !VisibleFirstWords(program).empty()) {
    const std::string& word = out.positionals[command.positionals.size()];
    throw Bad("unknown command '" + word + "'" + DidYouMean(word, VisibleFirstWords(program)) + "; '" +
              program.name + " --help' lists the commands");
  }
  if (!TakesAnyNumber(command) && out.positionals.size() > command.positionals.size()) {
    throw Bad("unexpected argument '" + out.positionals[command.positionals.size()] + "'" +
              (command.positionals.empty() ? "" : " (" + program.name + " " + command.name + " takes " +
                                                      Joined(command.positionals, " ") + ")"));
  }
  return out;
}

std::string OverviewText(const ProgramSpec& program) {
  std::string out;
  const CommandSpec* fallback = DefaultCommand(program);
  bool named = std::any_of(program.commands.begin(), program.commands.end(),
                           [](const CommandSpec& c) { return !c.name.empty() && !c.hidden; });
  if (fallback) out += "usage: " + CommandUsage(program, *fallback) + "\n";
  if (named) {
    out += std::string(fallback ? "       " : "usage: ") + program.name + " COMMAND [OPTIONS]\n";
    out += "       " + program.name + " help COMMAND   (or " + program.name + " COMMAND --help)\n";
  }
  out += "\n" + Wrap(program.description, 0, 0);
  if (fallback) {
    out += "\nOptions:\n" + OptionTable(OptionsOf(program, *fallback));
  }
  if (named) {
    std::string group = "\x01";
    size_t width = 0;
    for (const auto& c : program.commands)
      if (!c.hidden && !c.name.empty()) width = std::max(width, c.name.size());
    for (const auto& c : program.commands) {
      if (c.hidden || c.name.empty()) continue;
      if (c.group != group) {
        group = c.group;
        out += "\n" + (group.empty() ? std::string("Commands") : group) + ":\n";
      }
      std::string head = "  " + c.name + std::string(width - c.name.size() + 2, ' ');
      out += head + Wrap(c.summary, head.size(), head.size());
    }
  }
  if (!program.global_options.empty() && !fallback) {
    std::vector<const OptionSpec*> globals;
    for (const auto& o : program.global_options) globals.push_back(&o);
    out += "\nGlobal options (anywhere on the line):\n" + OptionTable(globals);
  }
  if (!program.footer.empty()) out += "\n" + Wrap(program.footer, 0, 0);
  return out;
}

std::string CommandHelpText(const ProgramSpec& program, const CommandSpec& command) {
  if (command.name.empty()) return OverviewText(program);
  std::string out = Wrap("usage: " + CommandUsage(program, command), 7, 0);
  out += "\n" + Wrap(command.summary, 0, 0);
  if (!command.details.empty()) out += "\n" + Wrap(command.details, 0, 0);
  std::vector<const OptionSpec*> own;
  for (const auto& o : command.options) own.push_back(&o);
  if (!own.empty()) out += "\nOptions:\n" + OptionTable(own);
  if (!program.global_options.empty()) {
    std::vector<const OptionSpec*> globals;
    for (const auto& o : program.global_options) globals.push_back(&o);
    out += "\nGlobal options:\n" + OptionTable(globals);
  }
  return out;
}

std::string HelpFor(const ProgramSpec& program, const std::vector<std::string>& words) {
  if (words.empty()) return OverviewText(program);
  size_t used = 0;
  if (const CommandSpec* c = LongestMatch(program, words, &used); c && used == words.size()) {
    std::string out = CommandHelpText(program, *c);
    // "help restore": also the commands that begin with it.
    std::vector<std::string> more = ActionsOf(program, words[0]);
    if (words.size() == 1 && !more.empty()) {
      out += "\nAlso: " + Joined(more, ", ") + " (" + program.name + " help " + words[0] + " ACTION)\n";
    }
    return out;
  }
  if (words.size() == 1) {
    std::vector<const CommandSpec*> under;
    for (const auto& c : program.commands) {
      std::vector<std::string> w = Words(c.name);
      if (!c.hidden && w.size() >= 2 && w[0] == words[0]) under.push_back(&c);
    }
    if (!under.empty()) {
      std::string out = program.name + " " + words[0] + " ACTION:\n";
      for (const CommandSpec* c : under) {
        out += "\n" + Wrap(CommandUsage(program, *c), 4, 0);
        out += Wrap(c->summary, 6, 0);
      }
      out += "\n'" + program.name + " help " + words[0] + " ACTION' shows an action's options.\n";
      return out;
    }
  }
  ResolveCommand(program, words, &used);  // throws the usual error
  throw Bad("no help for '" + ShellWords(words) + "'");
}

std::optional<int> AnswerStandardRequests(const ProgramSpec& program, const std::vector<std::string>& args,
                                          std::ostream& out) {
  const CommandSpec* fallback = DefaultCommand(program);
  if (args.empty() && !fallback) {
    out << OverviewText(program);
    return 2;
  }
  std::vector<std::string> before_end(args.begin(), std::find(args.begin(), args.end(), "--"));
  auto has = [&](const char* a) { return std::find(before_end.begin(), before_end.end(), a) != before_end.end(); };
  if (has("--version")) {
    out << VersionLine(program.name) << "\n";
    return 0;
  }
  if (has("--generate-man")) {
    out << ManPage(program);
    return 0;
  }
  if (has("--generate-bash-completion")) {
    out << BashCompletion(program);
    return 0;
  }
  if (has("--generate-markdown")) {
    out << MarkdownReference(program);
    return 0;
  }
  std::vector<std::string> words;
  for (const auto& [_, w] : NonOptionWords(args, AllValued(program))) words.push_back(w);
  bool help_word = !words.empty() && words[0] == "help" && !program.Find("help");
  if (help_word) {
    out << HelpFor(program, std::vector<std::string>(words.begin() + 1, words.end()));
    return 0;
  }
  if (has("--help") || has("-h")) {
    size_t used = 0;
    const CommandSpec* c = LongestMatch(program, words, &used);
    if (c) out << CommandHelpText(program, *c);
    else if (!words.empty() && !ActionsOf(program, words[0]).empty()) out << HelpFor(program, {words[0]});
    else out << OverviewText(program);
    return 0;
  }
  return std::nullopt;
}

std::string ManPage(const ProgramSpec& program) {
  std::string out;
  out += ".\\\" Generated by " + program.name + " --generate-man from the program's definitions; do not edit.\n";
  out += ".TH " + Upper(program.name) + " " + std::to_string(program.man_section) + " \"\" \"" +
         VersionLine(program.name) + "\" \"Ferry\"\n";
  out += ".SH NAME\n" + RoffEscape(program.name) + " \\- " + RoffEscape(program.summary) + "\n";
  out += ".SH SYNOPSIS\n";
  const CommandSpec* fallback = DefaultCommand(program);
  if (fallback) out += ".B " + RoffEscape(CommandUsage(program, *fallback)) + "\n.br\n";
  if (std::any_of(program.commands.begin(), program.commands.end(), [](const CommandSpec& c) { return !c.name.empty(); }))
    out += ".B " + RoffEscape(program.name) + "\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n";
  out += ".SH DESCRIPTION\n" + RoffParagraphs(program.description);
  auto options = [&](const std::vector<const OptionSpec*>& list) {
    std::string s;
    for (const OptionSpec* o : list) {
      s += ".TP\n.B \\-\\-" + RoffEscape(o->name);
      if (!o->is_flag()) s += " \\fI" + RoffEscape(o->placeholder) + "\\fR";
      if (o->repeatable) s += " ...";
      s += "\n" + RoffEscape(o->help) + "\n";
    }
    return s;
  };
  if (fallback) {
    std::vector<const OptionSpec*> own;
    for (const auto& o : fallback->options) own.push_back(&o);
    out += ".SH OPTIONS\n" + options(own);
  }
  bool any_named = false;
  for (const auto& c : program.commands) {
    if (c.hidden || c.name.empty()) continue;
    if (!any_named) out += ".SH COMMANDS\n", any_named = true;
    out += ".SS \"" + RoffEscape(c.name) + "\"\n";
    out += ".B " + RoffEscape(CommandUsage(program, c)) + "\n.PP\n";
    out += RoffParagraphs(c.summary);
    if (!c.details.empty()) out += ".PP\n" + RoffParagraphs(c.details);
    std::vector<const OptionSpec*> own;
    for (const auto& o : c.options) own.push_back(&o);
    out += options(own);
  }
  if (!program.global_options.empty()) {
    std::vector<const OptionSpec*> globals;
    for (const auto& o : program.global_options) globals.push_back(&o);
    out += ".SH GLOBAL OPTIONS\n" + options(globals);
  }
  if (!program.footer.empty()) out += ".SH NOTES\n" + RoffParagraphs(program.footer);
  out += ".SH SEE ALSO\nThe documentation in /usr/share/doc/ferry and docs/ of the source: cli.md, cli-reference.md.\n";
  return out;
}

std::string BashCompletion(const ProgramSpec& program) {
  std::string fn = "_ferry_complete_";
  for (char c : program.name) fn += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  std::set<std::string> valued = AllValued(program);
  std::map<std::string, std::string> value_kind;  // option -> the compgen arguments for its value
  auto note = [&](const OptionSpec& o) {
    if (o.is_flag() || value_kind.count("--" + o.name)) return;
    switch (o.kind) {
      case ValueKind::kFile: value_kind["--" + o.name] = "-f"; break;
      case ValueKind::kDirectory: value_kind["--" + o.name] = "-d"; break;
      case ValueKind::kChoice: value_kind["--" + o.name] = "-W '" + Joined(o.choices, " ") + "'"; break;
      case ValueKind::kText: break;
    }
  };
  for (const auto& o : program.global_options) note(o);
  for (const auto& c : program.commands)
    for (const auto& o : c.options) note(o);

  std::string globals;
  for (const auto& o : program.global_options) globals += " --" + o.name;
  std::string out = "# bash completion for " + program.name + "; generated by " + program.name +
                    " --generate-bash-completion from its definitions; do not edit.\n";
  out += fn + "() {\n";
  out += "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n";
  out += "  local valued=' ";
  for (const auto& v : valued) out += "--" + v + " ";
  out += "'\n";
  out += "  case $prev in\n";
  for (const auto& [option, args] : value_kind) {
    out += "    " + option + ") COMPREPLY=($(compgen " + args + " -- \"$cur\")); return ;;\n";
  }
  out += "  esac\n";
  out += "  [[ $valued == *\" $prev \"* ]] && return  # a value to type\n";
  out += "  local i w words=()\n";
  out += "  for ((i = 1; i < COMP_CWORD; i++)); do\n";
  out += "    w=${COMP_WORDS[i]}\n";
  out += "    if [[ $w == --* ]]; then\n";
  out += "      [[ $w != *=* && $valued == *\" $w \"* ]] && ((i++))\n";
  out += "      continue\n";
  out += "    fi\n";
  out += "    words+=(\"$w\")\n";
  out += "  done\n";
  out += "  local line=\" ${words[*]} \" command='' options=''\n";
  out += "  case $line in\n";
  // Longest names first, so "restore disk" wins over "restore".
  std::vector<const CommandSpec*> sorted;
  for (const auto& c : program.commands)
    if (!c.hidden && !c.name.empty()) sorted.push_back(&c);
  std::stable_sort(sorted.begin(), sorted.end(), [](const CommandSpec* a, const CommandSpec* b) {
    return Words(a->name).size() > Words(b->name).size();
  });
  for (const CommandSpec* c : sorted) {
    std::string opts;
    for (const auto& o : c->options) opts += (opts.empty() ? "" : " ") + std::string("--") + o.name;
    out += "    \" " + c->name + " \"*) command='" + c->name + "' options='" + opts + "' ;;\n";
  }
  if (const CommandSpec* fallback = DefaultCommand(program)) {
    std::string opts;
    for (const auto& o : fallback->options) opts += (opts.empty() ? "" : " ") + std::string("--") + o.name;
    out += "    *) options='" + opts + "' ;;\n";
  }
  out += "  esac\n";
  out += "  if [[ $cur == -* ]]; then\n";
  out += "    COMPREPLY=($(compgen -W \"$options" + globals + " --help\" -- \"$cur\"))\n";
  out += "    return\n";
  out += "  fi\n";
  // The next word of a command name, after the words typed so far.
  out += "  local names='";
  for (const CommandSpec* c : sorted) out += c->name + ",";
  out += "help'\n";
  out += "  local typed=\"${words[*]}\" next=' ' name rest\n";
  out += "  local IFS=,\n";
  out += "  for name in $names; do\n";
  out += "    if [[ -z $typed ]]; then rest=$name\n";
  out += "    elif [[ $name == \"$typed \"* ]]; then rest=${name#\"$typed \"}\n";
  out += "    else continue; fi\n";
  out += "    rest=${rest%% *}\n";
  out += "    [[ $next == *\" $rest \"* ]] || next+=\"$rest \"\n";
  out += "  done\n";
  out += "  IFS=$' \\t\\n'\n";
  out += "  COMPREPLY=($(compgen -W \"$next\" -- \"$cur\"))\n";
  out += "}\n";
  out += "complete -F " + fn + " " + program.name + "\n";
  return out;
}

void CheckProgramSpec(const ProgramSpec& program) {
  std::map<std::string, bool> is_flag;
  std::set<std::string> names;
  auto check = [&](const OptionSpec& o, const std::string& where) {
    auto [it, inserted] = is_flag.emplace(o.name, o.is_flag());
    if (!inserted && it->second != o.is_flag())
      throw Error(ErrorKind::kInternal, "--" + o.name + " is a flag in one command and takes a value in another (" + where + ")");
  };
  for (const auto& o : program.global_options) check(o, "global");
  for (const auto& c : program.commands) {
    if (!names.insert(c.name).second) throw Error(ErrorKind::kInternal, "command '" + c.name + "' defined twice");
    std::set<std::string> own;
    for (const auto& o : c.options) {
      check(o, c.name);
      if (!own.insert(o.name).second) throw Error(ErrorKind::kInternal, c.name + ": --" + o.name + " listed twice");
    }
  }
}

std::string MarkdownReference(const ProgramSpec& program) {
  CheckProgramSpec(program);
  auto cell = [](std::string s) {
    std::string out;
    for (char c : s) {
      if (c == '|') out += "\\|";
      else if (c == '\n') out += ' ';
      else out += c;
    }
    return out;
  };
  auto table = [&](const std::vector<const OptionSpec*>& list) {
    std::string s = "| option | meaning |\n|---|---|\n";
    for (const OptionSpec* o : list) s += "| `" + cell(OptionLabel(*o)) + "` | " + cell(o->help) + " |\n";
    return s;
  };
  std::string out = "## " + program.name + "\n\n" + program.summary + ".\n\n";
  const CommandSpec* fallback = DefaultCommand(program);
  if (fallback) {
    out += "```\n" + CommandUsage(program, *fallback) + "\n```\n\n";
    std::vector<const OptionSpec*> own;
    for (const auto& o : fallback->options) own.push_back(&o);
    out += table(own) + "\n";
  }
  for (const auto& c : program.commands) {
    if (c.hidden || c.name.empty()) continue;
    out += "### " + program.name + " " + c.name + "\n\n```\n" + CommandUsage(program, c) + "\n```\n\n";
    out += c.summary + "\n\n";
    if (!c.details.empty()) out += c.details + "\n\n";
    std::vector<const OptionSpec*> own;
    for (const auto& o : c.options) own.push_back(&o);
    if (!own.empty()) out += table(own) + "\n";
  }
  if (!program.global_options.empty()) {
    std::vector<const OptionSpec*> globals;
    for (const auto& o : program.global_options) globals.push_back(&o);
    out += "### Global options of " + program.name + "\n\n" + table(globals) + "\n";
  }
  return out;
}

}  // namespace ferry
