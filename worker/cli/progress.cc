#include "progress.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

namespace ferry::cli {

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (bytes >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

ProgressLine::ProgressLine(std::string label, std::function<std::pair<uint64_t, uint64_t>()> sample)
    : label_(std::move(label)), sample_(std::move(sample)), enabled_(::isatty(2) == 1) {
  if (enabled_) thread_ = std::thread([this] { Loop(); });
}

ProgressLine::ProgressLine(std::function<std::string()> describe)
    : describe_(std::move(describe)), enabled_(::isatty(2) == 1) {
  if (enabled_) thread_ = std::thread([this] { Loop(); });
}

ProgressLine::~ProgressLine() {
  if (!enabled_) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  std::fputs("\r\033[K", stderr);
}

void ProgressLine::Loop() {
  auto start = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stop_; })) {
    if (describe_) {
      std::fprintf(stderr, "\r\033[K%s", describe_().c_str());
      std::fflush(stderr);
      continue;
    }
    auto [done, total] = sample_();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    std::string eta = "--:--";
    if (rate > 0 && total >= done) {
      auto left = static_cast<long>(static_cast<double>(total - done) / rate);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%ld:%02ld", left / 60, left % 60);
      eta = buf;
    }
    std::fprintf(stderr, "\r\033[K%s %s / %s  %s/s  ETA %s", label_.c_str(),
                 HumanBytes(static_cast<double>(done)).c_str(),
                 HumanBytes(static_cast<double>(total)).c_str(), HumanBytes(rate).c_str(), eta.c_str());
    std::fflush(stderr);
  }
}

}  // namespace ferry::cli
