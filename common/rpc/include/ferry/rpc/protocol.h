// The worker protocol's generated types (worker_protocol.capnp, namespace
// ferry::rpc) and the few conventions the schema states only in comments.
// See docs/worker-protocol.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "ferry/common/error.h"
#include "ferry/common/stage_busy.h"
#include "ferry/rpc/worker_protocol.capnp.h"

namespace ferry::rpc {

// The version this build speaks (RegisterRequest.protocolVersion).
inline constexpr uint32_t kProtocolVersion = PROTOCOL_VERSION;

// Frame limits of the coordinator's worker port (docs/worker-protocol.md,
// "Limits"): until registerWorker succeeded, none over
// kUnregisteredMessageBytes; after it, none over kMaxMessageBytes (an
// inventory of 20,000 VMs with long names, tags and disks is about 8.5 MiB;
// coordinator/worker_rpc_server_test measures it). A larger frame closes the
// connection after its 8-byte header, before anything is allocated for it.
inline constexpr uint64_t kUnregisteredMessageBytes = uint64_t{256} << 10;
inline constexpr uint64_t kMaxMessageBytes = uint64_t{32} << 20;

// WorkResult.errorKind: the snake_case name of a ferry::ErrorKind
// (docs/error-policy.md): bad_input, not_found, corrupt, environment,
// retryable, interrupted, internal.
inline const char* WireErrorKind(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadInput: return "bad_input";
    case ErrorKind::kNotFound: return "not_found";
    case ErrorKind::kCorrupt: return "corrupt";
    case ErrorKind::kEnvironment: return "environment";
    case ErrorKind::kRetryable: return "retryable";
    case ErrorKind::kInterrupted: return "interrupted";
    case ErrorKind::kInternal: return "internal";
  }
  return "internal";
}

// The inverse of WireErrorKind; nullopt for a name this build does not know
// (treat it as kInternal: not retried).
inline std::optional<ErrorKind> ParseWireErrorKind(std::string_view name) {
  for (ErrorKind k : {ErrorKind::kBadInput, ErrorKind::kNotFound, ErrorKind::kCorrupt,
                      ErrorKind::kEnvironment, ErrorKind::kRetryable, ErrorKind::kInterrupted,
                      ErrorKind::kInternal}) {
    if (name == WireErrorKind(k)) return k;
  }
  return std::nullopt;
}

// StageStats (Progress.stages, WorkResult.stages) to and from StageBusy.
inline void SetStageStats(const StageBusy& busy, StageStats::Builder out) {
  out.setWallUs(busy.wall_us);
  out.setSourceBusyUs(busy.source_us);
  out.setComputeBusyUs(busy.compute_us);
  out.setNetworkBusyUs(busy.network_us);
  out.setTargetBusyUs(busy.target_us);
  out.setRemoteStore(busy.remote_store);
}
inline StageBusy StageBusyFrom(StageStats::Reader in) {
  StageBusy b;
  b.wall_us = in.getWallUs();
  b.source_us = in.getSourceBusyUs();
  b.compute_us = in.getComputeBusyUs();
  b.network_us = in.getNetworkBusyUs();
  b.target_us = in.getTargetBusyUs();
  b.remote_store = in.getRemoteStore();
  return b;
}

}  // namespace ferry::rpc
