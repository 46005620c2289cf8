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

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }

void Log(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) < g_level) return;
  std::string line = NowRfc3339() + " ferry[" + std::to_string(::getpid()) + "] " +
                     LevelName(level) + " " + message + "\n";
  // One write per line so lines from several threads do not interleave.
  (void)!::write(2, line.data(), line.size());
}

}  // namespace ferry
