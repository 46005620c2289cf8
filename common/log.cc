#include "ferry/common/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "ferry/common/manifest.h"

namespace ferry {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "DEBUG";
    case LogLevel::kInfo: return "INFO";
    case LogLevel::kWarning: return "WARN";
    case LogLevel::kError: return "ERROR";
  }
  return "?";
}
// sd-daemon(3) priorities: what journald reads from a "<N>" line prefix.
int JournalPriority(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return 7;
    case LogLevel::kInfo: return 6;
    case LogLevel::kWarning: return 4;
    case LogLevel::kError: return 3;
  }
  return 6;
}
// Whether stderr is the journal's stream (systemd sets JOURNAL_STREAM to its
// "device:inode"; a child with stderr redirected elsewhere inherits the
// variable, hence the comparison): then lines carry a priority prefix and no
// time or pid, which journald records itself.
bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st;
  if (::fstat(2, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}
}  // namespace

thread_local LogCapture* t_capture = nullptr;

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }

LogCapture::LogCapture(size_t max_lines) : outer_(t_capture), max_lines_(max_lines) { t_capture = this; }
LogCapture::~LogCapture() { t_capture = outer_; }

std::vector<std::string> LogCapture::Take() {
  std::vector<std::string> out = std::move(lines_);
  if (dropped_ > 0) out.push_back("(" + std::to_string(dropped_) + " more lines left out)");
  lines_.clear();
  dropped_ = 0;
  return out;
}

void Log(LogLevel level, const std::string& message) {
  if (LogCapture* c = t_capture; c != nullptr && level >= LogLevel::kInfo) {
    if (c->lines_.size() < c->max_lines_) {
      std::string line = LevelName(level);
      line += ' ';
      line += message;
      c->lines_.push_back(std::move(line));
    }
    else ++c->dropped_;
  }
  if (static_cast<int>(level) < g_level) return;
  static const bool journal = StderrIsJournal();
  std::string line = journal ? "<" + std::to_string(JournalPriority(level)) + ">" + LevelName(level) + " " + message + "\n"
                             : NowRfc3339() + " ferry[" + std::to_string(::getpid()) + "] " + LevelName(level) + " " +
                                   message + "\n";
  // One write per line so lines from several threads do not interleave.
  (void)!::write(2, line.data(), line.size());
}

}  // namespace ferry
