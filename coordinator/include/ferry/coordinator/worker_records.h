// Worker records: the one way a worker and its token are created and
// removed, whether by POST/DELETE /workers or by an appliance deployment
// (appliance_deployer.h).
#pragma once

#include <cstdint>
#include <string>

#include "ferry/coordinator/database.h"

namespace ferry::coordinator {

// Inserts a worker named `name` with the hash of `token` (NewToken());
// ConflictError if the name is taken. Returns its id. Inside the caller's
// transaction.
int64_t InsertWorkerRecord(Database& db, const std::string& name, const std::string& bandwidth,
                           const std::string& token);

// Removes the worker record (revoking its token); the tasks and snapshots it
// ran keep their rows without it. The caller checks it runs nothing.
void DeleteWorkerRecord(Database& db, int64_t worker_id);

}  // namespace ferry::coordinator
