// Database: a thin, typed layer over one SQLite connection.
//
// The coordinator's state lives in SQLite (WAL) so that a restart, even after
// kill -9, loses nothing that was acknowledged. Schema changes are numbered
// migrations applied in order at open time (docs/coordinator-database.md);
// PRAGMA user_version records the last one applied.
//
// Thread safety: none. A Database is used under its owner's mutex. The
// coordinator opens two: one for writes (the scheduler's) and one read-only
// for API queries, so that reads never wait behind a long write (WAL gives
// readers a consistent snapshot).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace ferry::coordinator {

class Statement {
 public:
  Statement(sqlite3* db, std::string_view sql);
  ~Statement();
  Statement(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Binding is 1-based, as in SQLite. Returns *this for chaining.
  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, const std::string& value);
  Statement& Bind(int index, std::string_view value);
  Statement& Bind(int index, const char* value) { return Bind(index, std::string_view(value)); }
  Statement& Bind(int index, double value);
  Statement& BindNull(int index);
  Statement& Bind(int index, const std::optional<int64_t>& value);
  Statement& Bind(int index, const std::optional<std::string>& value);

  // Steps once; true while a row is available.
  bool Step();
  // Runs to completion (INSERT/UPDATE/DELETE).
  void Run();
  void Reset();

  int64_t Int(int column) const;
  double Real(int column) const;
  std::string Text(int column) const;
  bool IsNull(int column) const;
  std::optional<int64_t> OptInt(int column) const;
  std::optional<std::string> OptText(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

class Database {
 public:
  // Opens (creating if needed) the database file and applies pending
  // migrations. read_only opens an existing database for queries only.
  static Database Open(const std::string& path, bool read_only = false);
  ~Database();
  Database(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  Statement Prepare(std::string_view sql) { return Statement(db_, sql); }
  // A prepared statement kept for reuse, reset and unbound: for hot
  // statements that are run to completion before the next use of the same
  // SQL (never while one is still being stepped: that would reset it).
  // Every statement handed out is reset again when the next transaction
  // ends: a SELECT left on its last row holds a read snapshot, and WAL
  // checkpoints cannot pass it (the WAL grew to 480 MB in a 2,000-VM run).
  // So do not read a cached statement after the transaction it ran in.
  Statement& Cached(std::string_view sql);
  void ResetCached();
  void Execute(std::string_view sql);  // one or more statements, no results
  int64_t LastInsertId() const;
  int Changes() const;
  int SchemaVersion();

  // RAII transaction: BEGIN IMMEDIATE on construction, ROLLBACK unless
  // Commit() was called.
  class Transaction {
   public:
    explicit Transaction(Database& db);
    ~Transaction();
    void Commit();

   private:
    Database& db_;
    bool done_ = false;
  };

  // RAII savepoint inside an open transaction: Release() keeps its changes;
  // otherwise the destructor rolls back to it, leaving the rest of the
  // transaction as it was. Makes one operation atomic inside a group commit.
  class Savepoint {
   public:
    explicit Savepoint(Database& db);
    ~Savepoint();
    void Release();

   private:
    Database& db_;
    bool done_ = false;
  };

  // A transaction without RAII, for a group commit whose end is decided
  // elsewhere (SessionRunner): Begin, then Commit or Rollback.
  void Begin() { Execute("BEGIN IMMEDIATE"); }
  void Commit();
  void Rollback() noexcept;
  bool InTransaction() const;

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  void Migrate();
  sqlite3* db_;
  std::unordered_map<std::string, std::unique_ptr<Statement>> cache_;
  std::vector<Statement*> handed_out_;  // cached statements used since the last ResetCached
};

// The number of the newest migration this build knows.
int LatestSchemaVersion();

}  // namespace ferry::coordinator
