#include "ferry/common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

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
  std::string line = NowRfc3339() + " ferry[" + std::to_string(::getpid()) + "] " +
                     LevelName(level) + " " + message + "\n";
  // One write per line so lines from several threads do not interleave.
  (void)!::write(2, line.data(), line.size());
}

}  // namespace ferry
