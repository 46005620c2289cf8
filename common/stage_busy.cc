#include "ferry/common/stage_busy.h"

#include <algorithm>
#include <cmath>

namespace ferry {

const char* StageName(Stage stage) {
  switch (stage) {
    case Stage::kSource: return "source";
    case Stage::kCompute: return "compute";
    case Stage::kNetwork: return "network";
    case Stage::kTarget: return "target";
  }
  return "unknown";
}

std::optional<Stage> ParseStage(std::string_view name) {
  for (Stage s : kStages) {
    if (name == StageName(s)) return s;
  }
  return std::nullopt;
}

uint64_t StageBusy::us(Stage stage) const {
  switch (stage) {
    case Stage::kSource: return source_us;
    case Stage::kCompute: return compute_us;
    case Stage::kNetwork: return network_us;
    case Stage::kTarget: return target_us;
  }
  return 0;
}

double StageBusy::percent(Stage stage) const {
  if (wall_us == 0 || !measured(stage)) return 0.0;
  return std::min(100.0, 100.0 * static_cast<double>(us(stage)) / static_cast<double>(wall_us));
}

std::optional<Stage> StageBusy::bottleneck() const {
  if (wall_us == 0) return std::nullopt;
  std::optional<Stage> best;
  for (Stage s : kStages) {
    if (measured(s) && (!best || us(s) > us(*best))) best = s;
  }
  return best;
}

std::string StageBusy::Describe() const {
  std::string out;
  for (Stage s : kStages) {
    if (!out.empty()) out += ", ";
    out += StageName(s);
    out += measured(s) ? " " + std::to_string(static_cast<int>(std::lround(percent(s)))) + "%" : " -";
  }
  std::optional<Stage> b = bottleneck();
  return out + "; bottleneck: " + (b ? StageName(*b) : "-");
}

}  // namespace ferry
