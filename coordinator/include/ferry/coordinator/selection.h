// What a backup job's selection and exclude_disks pick from the inventory:
// the one resolution that both a session's start (SessionRunner) and the
// job form's preview (POST /api/v1/jobs/preview) use, so that a preview
// shows what a session would back up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "ferry/coordinator/database.h"

namespace ferry::coordinator {

struct SelectedDisk {
  std::string name;
  int64_t size_bytes = 0;
  bool excluded = false;  // by an exclude_disks entry
};

struct SelectedVm {
  int64_t vm_id = 0, host_id = 0;
  std::string name, host, cluster;
  std::vector<std::string> tags;
  std::vector<SelectedDisk> disks;  // by name, excluded ones included
  // A session backs the VM up only if it has a disk not excluded.
  bool HasDisksToBackUp() const;
};

// The VMs (not missing from their host's inventory) that `selection`
// ({"vms", "tags", "hosts", "clusters"}: arrays of names; a VM matching any
// is chosen) picks, in VM id order, each with all its disks, those that
// `exclude_disks` ([{"vm"?, "disk"}]) names marked. Both in the canonical
// form the API stores.
std::vector<SelectedVm> ResolveSelection(Database& db, const boost::json::object& selection,
                                         const boost::json::array& exclude_disks);

}  // namespace ferry::coordinator
