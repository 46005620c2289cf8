#include "ferry/http/metrics_text.h"

#include <cstdio>

namespace ferry::http {

std::string MetricsLabelValue(const std::string& v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\', out += ch;
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

void MetricsText::Family(const char* name, const char* type, const char* help) {
  out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void MetricsText::Sample(const std::string& name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += "{";
    for (size_t i = 0; i < labels.size(); ++i)
      out_ += (i ? "," : "") + labels[i].first + "=\"" + MetricsLabelValue(labels[i].second) + "\"";
    out_ += "}";
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, " %.17g\n", value);
  out_ += buf;
}

}  // namespace ferry::http
