// Ferry's one logger: lines to stderr, "2026-11-22T03:42:10Z ferry[pid] LEVEL message".
// Messages must never contain secrets (tokens, keys, passwords).
#pragma once

#include <string>
#include <vector>

namespace ferry {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
void Log(LogLevel level, const std::string& message);

inline void LogDebug(const std::string& m) { Log(LogLevel::kDebug, m); }
inline void LogInfo(const std::string& m) { Log(LogLevel::kInfo, m); }
inline void LogWarning(const std::string& m) { Log(LogLevel::kWarning, m); }
inline void LogError(const std::string& m) { Log(LogLevel::kError, m); }

// While it lives, keeps the lines its thread logs at info and above (whatever
// the log level), e.g. a worker's task log sent back with the task's result.
// They are still written to stderr as usual. Captures nest: the innermost
// one gets the lines. At most `max_lines` are kept; later lines are counted.
class LogCapture {
 public:
  explicit LogCapture(size_t max_lines = 200);
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // "WARN message" lines so far (and a last line saying how many were left out).
  std::vector<std::string> Take();

 private:
  friend void Log(LogLevel, const std::string&);
  LogCapture* outer_;
  size_t max_lines_;
  size_t dropped_ = 0;
  std::vector<std::string> lines_;
};

}  // namespace ferry
