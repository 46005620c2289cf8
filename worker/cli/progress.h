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
  ~ProgressLine();  // clears the line

 private:
  void Loop();
  std::string label_;
  std::function<std::pair<uint64_t, uint64_t>()> sample_;
  bool enabled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ferry::cli
