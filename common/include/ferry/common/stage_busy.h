// How busy each stage of a disk backup's data path was, so that a session
// report can name the bottleneck the way backup products' reports do
// ("Bottleneck: Source"). Measured by the worker's pipeline
// (worker/disk_backup.cc), carried to the coordinator in the worker protocol,
// shown by the API and `ferry session show`. docs/architecture.md,
// "Statistics and the bottleneck", says what each stage's time is:
//
//   source   the disk being read: wall time with at least one read or map
//            request outstanding
//   compute  the worker's compute threads (zero check, SHA-256, zstd): their
//            busy time summed, divided by their number
//   network  waiting for a repository service (lookups, a full upload window,
//            the last acknowledgements), which includes the service's own
//            write time: it is not visible to the worker
//   target   waiting for a local repository's storage (lookups, writes)
//
// A disk's store time is one or the other (`remote_store`): the stage that
// does not apply is "not measured" (null in the API, "-" in the CLI).
//
// Each stage's busy time is a share of the disk's wall time; the bottleneck
// is the stage with the largest share.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ferry {

// In pipeline order, which also breaks ties.
enum class Stage { kSource, kCompute, kNetwork, kTarget };
inline constexpr Stage kStages[] = {Stage::kSource, Stage::kCompute, Stage::kNetwork, Stage::kTarget};

// "source", "compute", "network", "target".
const char* StageName(Stage stage);
std::optional<Stage> ParseStage(std::string_view name);

struct StageBusy {
  // Microseconds. `wall_us` is the disk's run; the others are each stage's
  // busy time in wall-time terms (so at most wall_us, up to rounding).
  uint64_t wall_us = 0;
  uint64_t source_us = 0;
  uint64_t compute_us = 0;
  uint64_t network_us = 0;
  uint64_t target_us = 0;
  bool remote_store = false;  // a repository service: network measured, target inside it

  uint64_t us(Stage stage) const;
  // Network for a remote store, target for a local one, source and compute always.
  bool measured(Stage stage) const {
    if (stage == Stage::kNetwork) return remote_store;
    if (stage == Stage::kTarget) return !remote_store;
    return true;
  }
  // Busy share of the wall time, 0..100 (0 while wall_us is 0).
  double percent(Stage stage) const;
  // The measured stage with the largest share; nullopt while wall_us is 0.
  std::optional<Stage> bottleneck() const;
  // "source 92%, compute 31%, network -, target 12%; bottleneck: source"
  // ("-": not measured).
  std::string Describe() const;
};

}  // namespace ferry
