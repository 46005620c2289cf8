// ferry copy: restore points from one repository into another (ferry/common/copy.h).
#include <boost/json.hpp>
#include <iostream>

#include "commands.h"
#include "ferry/common/copy.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "progress.h"

namespace json = boost::json;

namespace ferry::cli {

int CopyCommand(const Arguments& a) {
  if (!a.Get("to")) throw Error(ErrorKind::kBadInput, "missing required option --to (the target repository)");
  auto from = OpenRepo(a);
  rpc::RepositoryAccess to_access;
  if (auto file = a.Get("to-token-file")) to_access.token = ReadTokenFile(*file, "option --to-token-file");
  to_access.ca_file = a.Get("to-ca").value_or("");
  to_access.server_name = a.Get("to-server-name").value_or("");
  auto to = rpc::OpenRepository(*a.Get("to"), to_access);

  CopyOptions options;
  options.points = a.GetAll("point");
  options.vm = a.Get("vm");
  options.chain = a.Get("chain");
  options.dry_run = a.Has("dry-run");
  std::unique_ptr<BandwidthLimiter> limiter;
  if (auto cap = a.Get("bandwidth")) {
    try {
      limiter = std::make_unique<BandwidthLimiter>(BandwidthSchedule::Parse(*cap));
    } catch (const Error& e) {
      throw Error(ErrorKind::kBadInput, std::string("option --bandwidth: ") + e.what());
    }
    options.limiter = limiter.get();
  }
  CopyProgress progress;
  CopyReport report;
  {
    ProgressLine line([&] {
      return "copy: " + std::to_string(progress.chunks_done.load()) + " / " +
             std::to_string(progress.chunks_total.load()) + " chunks sent";
    });
    report = CopyPoints(*from, *to, options, &progress, &g_interrupted);
  }
  if (a.Has("json")) {
    json::array points;
    for (const auto& p : report.points) {
      json::object o{{"id", p.id},
                     {"vm", p.vm},
                     {"outcome", p.outcome},
                     {"chunks_sent", p.chunks_sent},
                     {"bytes_sent", p.bytes_sent},
                     {"chunks_present", p.chunks_present}};
      if (!p.error.empty()) o["error"] = p.error;
      points.push_back(std::move(o));
    }
    std::cout << json::serialize(json::object{{"from", from->location()},
                                              {"to", to->location()},
                                              {"dry_run", options.dry_run},
                                              {"points", std::move(points)},
                                              {"chunks_sent", report.chunks_sent},
                                              {"bytes_sent", report.bytes_sent},
                                              {"chunks_present", report.chunks_present},
                                              {"failed", report.failed()}})
              << std::endl;
  } else {
    for (const auto& p : report.points) {
      std::cout << p.id << " " << (p.vm.empty() ? "-" : p.vm) << " " << p.outcome;
      if (p.outcome == "copied" || p.outcome == "would copy") {
        std::cout << ": " << p.chunks_sent << " chunks (" << HumanBytes(static_cast<double>(p.bytes_sent))
                  << ") sent, " << p.chunks_present << " already there";
      }
      if (!p.error.empty()) std::cout << ": " << p.error;
      std::cout << "\n";
    }
    std::cout << "copy: " << report.points.size() << " point(s), " << report.failed() << " failed; "
              << report.chunks_sent << " chunks (" << HumanBytes(static_cast<double>(report.bytes_sent)) << ") "
              << (options.dry_run ? "would travel" : "sent") << ", " << report.chunks_present
              << " the target had" << std::endl;
  }
  return report.failed() ? ExitCodeFor(ErrorKind::kRetryable) : 0;
}

}  // namespace ferry::cli
