#include "ferry/worker/cbt.h"

#include "ferry/common/checksum.h"
#include "ferry/common/log.h"

namespace json = boost::json;

namespace ferry::worker {

namespace {
bool BoolMember(const json::object& o, std::string_view key, bool fallback) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_bool() ? it->value().as_bool() : fallback;
}
}  // namespace

std::vector<BitmapState> ListDirtyBitmaps(QmpClient& qmp, const std::string& node) {
  std::vector<BitmapState> out;
  json::value nodes = qmp.Execute("query-named-block-nodes", {{"flat", true}});
  for (const auto& n : nodes.as_array()) {
    const auto& o = n.as_object();
    auto name = o.find("node-name");
    if (name == o.end() || !name->value().is_string() || name->value().as_string() != node) continue;
    auto bitmaps = o.find("dirty-bitmaps");
    if (bitmaps == o.end() || !bitmaps->value().is_array()) break;
    for (const auto& b : bitmaps->value().as_array()) {
      const auto& bo = b.as_object();
      auto bn = bo.find("name");
      if (bn == bo.end() || !bn->value().is_string()) continue;
      BitmapState s;
      s.name = std::string(bn->value().as_string());
      s.recording = BoolMember(bo, "recording", true);
      s.inconsistent = BoolMember(bo, "inconsistent", false);
      s.busy = BoolMember(bo, "busy", false);
      s.persistent = BoolMember(bo, "persistent", false);
      out.push_back(std::move(s));
    }
    break;
  }
  return out;
}

std::string ChainId(const std::string& repository_id, const std::string& chain_name) {
  std::string key = repository_id + "/" + chain_name;
  return Sha256(key.data(), key.size()).Hex().substr(0, 8);
}

std::string ChainBitmapName(const std::string& chain_id, const std::string& generation) {
  return "ferry-" + chain_id + "-" + generation;
}

bool IsChainBitmap(const std::string& bitmap, const std::string& chain_id) {
  return bitmap.starts_with("ferry-" + chain_id + "-");
}

CbtPlan PlanCbt(const DiskRecord* previous, const std::vector<BitmapState>& chain_bitmaps,
                uint64_t disk_size, const std::string& disk_identity, const std::string& chain_id,
                const std::string& new_generation) {
  CbtPlan plan;
  plan.generation = new_generation;
  plan.new_bitmap = ChainBitmapName(chain_id, new_generation);
  const std::string expected = previous ? previous->cbt.bitmap : "";
  const BitmapState* found = nullptr;
  for (const auto& b : chain_bitmaps) {
    if (!expected.empty() && b.name == expected) {
      found = &b;
    } else {
      plan.stale_bitmaps.push_back(b.name);
    }
  }
  auto full = [&](std::string reason) {
    if (found) plan.stale_bitmaps.push_back(found->name);
    plan.reason = std::move(reason);
    return plan;
  };
  if (!previous) return full("first backup of this disk in the chain");
  if (previous->cbt.mode.empty() || expected.empty()) {
    return full("the last restore point of the chain recorded no dirty bitmap");
  }
  if (previous->size != disk_size) {
    return full("disk resized from " + std::to_string(previous->size) + " to " +
                std::to_string(disk_size) + " bytes");
  }
  if (!previous->cbt.disk_identity.empty() && previous->cbt.disk_identity != disk_identity) {
    return full("disk image changed from " + previous->cbt.disk_identity + " to " + disk_identity);
  }
  if (!found) {
    std::string why = "dirty bitmap " + expected + " is missing (VM restarted with a non-persistent "
                      "bitmap, or it was removed)";
    if (!chain_bitmaps.empty()) {
      why = "dirty bitmap " + expected + " is missing; found " + chain_bitmaps.front().name +
            " of another generation (a run after the last point, or a deleted point)";
    }
    return full(why);
  }
  if (found->inconsistent) return full("dirty bitmap " + expected + " is inconsistent (QEMU was not shut down cleanly)");
  if (found->busy) return full("dirty bitmap " + expected + " is in use by another operation");
  if (!found->recording) {
    return full("dirty bitmap " + expected + " is disabled (a previous backup was interrupted)");
  }
  plan.incremental = true;
  plan.previous_bitmap = expected;
  return plan;
}

void FinishCbtSuccess(QmpClient& qmp, const std::string& node, const CbtPlan& plan) {
  if (plan.incremental) {
    qmp.Execute("block-dirty-bitmap-remove", {{"node", node}, {"name", plan.previous_bitmap}});
  }
}

bool FinishCbtFailure(QmpClient& qmp, const std::string& node, const CbtPlan& plan) {
  try {
    bool started = false;
    for (const auto& b : ListDirtyBitmaps(qmp, node)) started |= b.name == plan.new_bitmap;
    if (!started) return true;  // failed before the snapshot: nothing changed

    json::array actions;
    auto action = [](const char* type, json::object data) {
      return json::object{{"type", type}, {"data", std::move(data)}};
    };
    if (plan.incremental) {
      actions.push_back(action("block-dirty-bitmap-enable", {{"node", node}, {"name", plan.previous_bitmap}}));
      actions.push_back(action("block-dirty-bitmap-merge",
                               {{"node", node},
                                {"target", plan.previous_bitmap},
                                {"bitmaps", json::array{json::value(plan.new_bitmap)}}}));
    }
    actions.push_back(action("block-dirty-bitmap-remove", {{"node", node}, {"name", plan.new_bitmap}}));
    qmp.Execute("transaction", {{"actions", std::move(actions)}});
    return true;
  } catch (const std::exception& e) {
    LogWarning("keeping changed-block state of node " + node + " after a failed backup: " + e.what() +
               " (the next backup of this chain will read the whole disk)");
    return false;
  }
}

}  // namespace ferry::worker
