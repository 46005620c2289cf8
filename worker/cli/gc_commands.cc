// Repository upkeep on the command line: `ferry gc` (garbage collection) and
// `ferry space` (space accounting), of a local repository directory or of a
// repository service's, which then runs them where its files are
// (common/include/ferry/common/gc.h, docs/gc.md).
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/gc.h"
#include "ferry/common/log.h"
#include "ferry/rpc/repository_service.h"
#include "progress.h"

namespace ferry::cli {

namespace {

std::string Fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string DescribeProgress(const GcProgress& p) {
  switch (static_cast<GcPhase>(p.phase.load())) {
    case GcPhase::kMark:
      return "gc: mark: " + std::to_string(p.points_read.load()) + " / " + std::to_string(p.points_total.load()) +
             " points read";
    case GcPhase::kSweep:
      return "gc: sweep: " + std::to_string(p.directories_done.load()) + " / " + std::to_string(kChunkDirectories) +
             " chunk directories, " + std::to_string(p.chunks_removed.load()) + " chunks removed";
    default:
      return "gc: starting";
  }
}

}  // namespace

int GcCommand(const Arguments& a) {
  const std::string location = RepoLocation(a);
  GcOptions options;
  options.dry_run = a.Has("dry-run");
  options.cancel = &g_interrupted;
  if (auto w = a.GetInt("window", 0, 7 * 24 * 60)) options.window = std::chrono::minutes(*w);
  if (auto t = a.GetInt("threads", 1, 64)) options.threads = static_cast<unsigned>(*t);
  GcProgress progress;
  GcReport r;
  {
    ProgressLine line([&] { return DescribeProgress(progress); });
    r = rpc::CollectGarbage(location, RepoAccess(a), options, &progress);
  }
  if (a.Has("json")) {
    std::cout << GcReportJson(r) << std::endl;
    return 0;
  }
  const std::string verb = r.dry_run ? "would remove" : "removed";
  std::cout << "gc: " << r.points << " point(s) and " << r.staged_points << " staged point(s) read (" << r.indexes
            << " index(es)"
            << (r.unchecked_indexes ? ", " + std::to_string(r.unchecked_indexes) + " without a check" : "")
            << "): " << r.chunks_referenced << " chunk(s) referenced\n"
            << "gc: " << r.chunks_seen << " chunk(s) in the store; " << verb << " " << r.chunks_removed << " ("
            << HumanBytes(static_cast<double>(r.bytes_removed)) << "); kept " << r.chunks_kept_by_window
            << " unreferenced chunk(s) (" << HumanBytes(static_cast<double>(r.bytes_kept_by_window))
            << ") newer than the cutoff " << r.cutoff << "\n";
  if (r.chunks_rescued) std::cout << "gc: " << r.chunks_rescued << " chunk(s) a killed GC was removing put back\n";
  if (r.writers_waited_for) std::cout << "gc: waited for " << r.writers_waited_for << " backup(s) writing to the bucket\n";
  if (r.stale_leases_removed) std::cout << "gc: removed " << r.stale_leases_removed << " expired writer lease(s)\n";
  if (r.chunks_retained) {
    std::cout << "gc: " << r.chunks_retained << " unreferenced chunk(s) ("
              << HumanBytes(static_cast<double>(r.bytes_retained)) << ") retained by the store (Object Lock), left\n";
  }
  if (r.quarantined_chunks) {
    std::cout << "gc: quarantine holds " << r.quarantined_chunks << " damaged chunk(s) ("
              << HumanBytes(static_cast<double>(r.quarantined_bytes)) << "), left alone\n";
  }
  std::cout << "gc: " << (r.dry_run ? "dry run " : "") << "done in " << Fixed(r.seconds, 1) << " s"
            << (r.resumed ? " (resumed a GC that was cut short)" : "") << "; mark " << Fixed(r.mark_seconds, 1)
            << " s, sweep " << Fixed(r.sweep_seconds, 1) << " s" << std::endl;
  return 0;
}

int SpaceCommand(const Arguments& a) {
  const std::string location = RepoLocation(a);
  GcProgress progress;
  SpaceReport r;
  {
    ProgressLine line([&] {
      return progress.phase.load() == static_cast<int>(GcPhase::kMark)
                 ? "space: " + std::to_string(progress.points_read.load()) + " / " +
                       std::to_string(progress.points_total.load()) + " points read"
                 : "space: " + std::to_string(progress.directories_done.load()) + " / " +
                       std::to_string(kChunkDirectories) + " chunk directories";
    });
    r = rpc::MeasureSpace(location, RepoAccess(a), &progress);
  }
  if (a.Has("json")) {
    std::cout << SpaceReportJson(r) << std::endl;
    return 0;
  }
  std::printf("%-30s %-16s %-10s %10s %9s %9s %10s\n", "POINT", "VM", "CHAIN", "LOGICAL", "CHUNKS", "UNIQUE", "FREES");
  for (const auto& p : r.points_space) {
    std::printf("%-30s %-16s %-10s %10s %9llu %9llu %10s\n", p.id.c_str(), p.vm.c_str(), p.chain.c_str(),
                HumanBytes(static_cast<double>(p.logical_bytes)).c_str(), static_cast<unsigned long long>(p.chunks),
                static_cast<unsigned long long>(p.unique_chunks),
                HumanBytes(static_cast<double>(p.unique_bytes)).c_str());
  }
  if (!r.chains.empty()) {
    std::printf("\n%-30s %7s %10s %9s %10s %9s %10s %6s\n", "CHAIN", "POINTS", "LOGICAL", "CHUNKS", "STORED",
                "UNIQUE", "FREES", "DEDUP");
    for (const auto& c : r.chains) {
      std::printf("%-30s %7llu %10s %9llu %10s %9llu %10s %6s\n", c.chain.empty() ? "-" : c.chain.c_str(),
                  static_cast<unsigned long long>(c.points), HumanBytes(static_cast<double>(c.logical_bytes)).c_str(),
                  static_cast<unsigned long long>(c.chunks), HumanBytes(static_cast<double>(c.stored_bytes)).c_str(),
                  static_cast<unsigned long long>(c.unique_chunks),
                  HumanBytes(static_cast<double>(c.unique_bytes)).c_str(), Fixed(c.dedup_ratio, 2).c_str());
    }
    std::printf("\n");
  }
  auto bytes = [](uint64_t b) { return HumanBytes(static_cast<double>(b)); };
  std::cout << "repository: " << r.points << " point(s), " << bytes(r.logical_bytes) << " logical; " << r.chunks
            << " chunk(s), " << bytes(r.stored_bytes) << " stored; dedup ratio " << Fixed(r.dedup_ratio, 2)
            << " (logical / stored bytes of referenced chunks)\n"
            << "referenced: " << r.referenced_chunks << " chunk(s), " << bytes(r.referenced_bytes)
            << "; referenced only by staged points: " << r.staged_only_chunks << " (" << bytes(r.staged_only_bytes)
            << ")\n"
            << "garbage: " << r.garbage_chunks << " chunk(s), " << bytes(r.garbage_bytes)
            << " referenced by nothing (ferry gc frees those older than its window)\n";
  if (r.missing_chunks)
    std::cout << "missing: " << r.missing_chunks << " referenced chunk(s) have no file (run ferry verify)\n";
  if (r.quarantined_chunks) {
    std::cout << "quarantine: " << r.quarantined_chunks << " damaged chunk(s), " << bytes(r.quarantined_bytes) << "\n";
  }
  for (const auto& p : r.problems) std::cout << "NOTE " << p << "\n";
  std::cout << "FREES: what removing that point alone (or every point of that chain) frees: its unique chunks, "
               "after a GC"
            << std::endl;
  return 0;
}

}  // namespace ferry::cli
