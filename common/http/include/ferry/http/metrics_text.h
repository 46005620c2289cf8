// The Prometheus text exposition format (0.0.4), for the daemons' /metrics
// (the coordinator's API, ferry-repository's --metrics-listen): one family's
// HELP and TYPE lines, then its samples.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ferry::http {

inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// A label value escaped as the format wants: \\, \" and \n.
std::string MetricsLabelValue(const std::string& value);

class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // type: "counter", "gauge", "summary", ...
  void Family(const char* name, const char* type, const char* help);
  void Sample(const std::string& name, const Labels& labels, double value);
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace ferry::http
