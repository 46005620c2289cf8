#include "ferry/coordinator/worker_records.h"

#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/session_runner.h"

namespace ferry::coordinator {

int64_t InsertWorkerRecord(Database& db, const std::string& name, const std::string& bandwidth,
                           const std::string& token) {
  Statement exists = db.Prepare("SELECT 1 FROM workers WHERE name = ?");
  exists.Bind(1, name);
  if (exists.Step()) throw ConflictError("a worker named '" + name + "' exists");
  db.Prepare("INSERT INTO workers (name, token_hash, bandwidth, created_at) "
             "VALUES (?, ?, ?, strftime('%s','now') * 1000)")
      .Bind(1, name).Bind(2, HashToken(token)).Bind(3, bandwidth).Run();
  return db.LastInsertId();
}

void DeleteWorkerRecord(Database& db, int64_t worker_id) {
  db.Prepare("UPDATE tasks SET worker_id = NULL WHERE worker_id = ?").Bind(1, worker_id).Run();
  db.Prepare("UPDATE snapshots SET worker_id = NULL WHERE worker_id = ?").Bind(1, worker_id).Run();
  db.Prepare("DELETE FROM workers WHERE id = ?").Bind(1, worker_id).Run();
}

}  // namespace ferry::coordinator
