// A live progress line on stderr ("bytes, rate, ETA"), shown only when
// stderr is a terminal so logs and pipes stay clean.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace ferry::cli {

std::string HumanBytes(double bytes);

class ProgressLine {
 public:
  // `sample` returns {done, total} in bytes; called a few times a second.
  ProgressLine(std::string label, std::function<std::pair<uint64_t, uint64_t>()> sample);
  // A line of the caller's own, for progress that is not bytes (phases,
  // directories); `describe` is called a few times a second.
  explicit ProgressLine(std::function<std::string()> describe);
  ~ProgressLine();  // clears the line

 private:
  void Loop();
  std::string label_;
  std::function<std::pair<uint64_t, uint64_t>()> sample_;
  std::function<std::string()> describe_;
  bool enabled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ferry::cli
