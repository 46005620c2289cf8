// Changed block tracking with QEMU dirty bitmaps, reconciled with the
// repository (docs/cbt.md).
//
// The repository is the source of truth. Each backup chain (a chain name in
// one repository) owns bitmaps named "ferry-<chain id>-<generation>". A
// restore point records, per disk, the bitmap its snapshot started and that
// bitmap's generation. The next backup of the chain trusts the VM's bitmap
// only if it is exactly that one, present, recording and consistent, and the
// disk's size and image are unchanged; anything else means a full read
// (holes skipped, known chunks not stored again) and a fresh bitmap, with the
// reason recorded. Bitmaps of other chains are never touched.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/common/manifest.h"
#include "ferry/worker/qmp_client.h"

namespace ferry::worker {

struct BitmapState {
  std::string name;
  bool recording = true;
  bool inconsistent = false;
  bool busy = false;
  bool persistent = false;
};

// Dirty bitmaps on a block node (query-named-block-nodes).
std::vector<BitmapState> ListDirtyBitmaps(QmpClient& qmp, const std::string& node);

// 8 hex digits naming a chain: the same chain name in two repositories gives
// two chains.
std::string ChainId(const std::string& repository_id, const std::string& chain_name);
std::string ChainBitmapName(const std::string& chain_id, const std::string& generation);
bool IsChainBitmap(const std::string& bitmap, const std::string& chain_id);

// What one run does with one disk's bitmaps.
struct CbtPlan {
  bool incremental = false;
  std::string reason;           // full: why (for the log and the restore point)
  std::string previous_bitmap;  // incremental: exported now, removed after success
  std::string new_bitmap;       // started in the snapshot transaction
  std::string generation;       // of new_bitmap
  std::vector<std::string> stale_bitmaps;  // this chain's bitmaps to drop before the snapshot
};

// Decides from the chain's last restore point holding this disk (null if
// none), the chain's bitmaps now on the disk's node, and the disk as it is.
// Pure: no QMP, so every trigger is unit tested.
CbtPlan PlanCbt(const DiskRecord* previous, const std::vector<BitmapState>& chain_bitmaps,
                uint64_t disk_size, const std::string& disk_identity, const std::string& chain_id,
                const std::string& new_generation);

// After a successful point: drops the bitmap that was exported (its changes
// are in the point). Throws on QMP failure.
void FinishCbtSuccess(QmpClient& qmp, const std::string& node, const CbtPlan& plan);

// After a failed run: keeps the changes for the next run. Incremental:
// the previous bitmap is re-enabled and the new one merged into it, so it
// again covers everything since the last point; full: the new bitmap is
// dropped. Never throws; returns false (logged) if QEMU refused.
bool FinishCbtFailure(QmpClient& qmp, const std::string& node, const CbtPlan& plan);

}  // namespace ferry::worker
