#include "ferry/coordinator/database.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "ferry/common/error.h"

namespace ferry::coordinator {
namespace {

std::string TempPath() {
  auto dir = std::filesystem::temp_directory_path() / ("ferry-db-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / "c.db").string();
}

TEST(Database, MigratesToLatestAndReopens) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    Database db = Database::Open(path);
    EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('h1', 'libvirt', 1)");
  }
  Database again = Database::Open(path);
  Statement s = again.Prepare("SELECT name, cluster FROM hosts");
  ASSERT_TRUE(s.Step());
  EXPECT_EQ(s.Text(0), "h1");
  EXPECT_EQ(s.Text(1), "");
  Statement mode = again.Prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.Step());
  EXPECT_EQ(mode.Text(0), "wal");
}

TEST(Database, RefusesANewerSchema) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  { Database::Open(path).Execute("PRAGMA user_version = 999"); }
  try {
    Database::Open(path);
    FAIL() << "opened a database from the future";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment);
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
  }
}

TEST(Database, TransactionRollsBackUnlessCommitted) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  Database db = Database::Open(path);
  {
    Database::Transaction tx(db);
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('gone', 'libvirt', 1)");
  }
  Statement s = db.Prepare("SELECT COUNT(*) FROM hosts");
  s.Step();
  EXPECT_EQ(s.Int(0), 0);
}

TEST(Database, NotADatabaseIsReportedAsCorrupt) {
  std::string path = TempPath();
  {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs("this is not sqlite, just text that is long enough to have a header......................", f);
    std::fclose(f);
  }
  try {
    Database::Open(path);
    FAIL() << "opened garbage";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt) << e.what();
  }
}

}  // namespace
}  // namespace ferry::coordinator
