// The lifecycle of committed points on the command line: prune (a retention
// policy, retention.h), remove one point, lock a point (docs/retention.md).
// Each runs against a repository directory or a repository service (which
// checks locks with its own clock).
#include <ctime>
#include <cstdio>
#include <iostream>

#include <boost/json.hpp>

#include "commands.h"
#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/common/retention.h"

namespace json = boost::json;

namespace ferry::cli {

namespace {

int64_t Now() { return static_cast<int64_t>(::time(nullptr)); }

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

int PruneCommand(const Arguments& a) {
  PruneOptions o;
  for (const auto& rule : RetentionRuleNames()) {
    if (auto v = a.Get(rule)) {
      try {
        SetRetentionRule(&o.policy, rule, *v);
      } catch (const Error& e) {
        throw Error(e.kind(), std::string("option --") + e.what());
      }
    }
  }
  ValidateRetentionPolicy(o.policy);  // before the repository is opened: a bad command touches nothing
  if (auto vm = a.Get("vm")) {
    if (vm->empty()) throw Error(ErrorKind::kBadInput, "option --vm: give a VM name or uuid");
    o.vm = *vm;
  }
  if (auto chain = a.Get("chain")) {
    if (chain->empty()) throw Error(ErrorKind::kBadInput, "option --chain: give a chain name");
    o.chain = *chain;
  }
  o.dry_run = a.Has("dry-run");
  o.now = Now();
  auto repo = OpenRepo(a);
  PruneReport r = Prune(repo->points(), o);
  auto action = [&](const PruneEntry& e) -> std::string {
    if (e.decision.keep) return "keep";
    if (e.removed) return "remove";
    return o.dry_run ? "remove" : "skip";
  };
  if (a.Has("json")) {
    json::array points, problems;
    for (const auto& e : r.entries) {
      json::array reasons;
      for (const auto& why : e.decision.reasons) reasons.emplace_back(why);
      points.push_back(json::object{{"id", e.decision.id},
                                    {"group", e.decision.group},
                                    {"started_at", e.started_at},
                                    {"action", action(e)},
                                    {"reasons", std::move(reasons)},
                                    {"outcome", e.outcome}});
    }
    for (const auto& p : r.problems) problems.push_back(json::object{{"entry", p.entry}, {"message", p.message}});
    std::cout << json::serialize(json::object{{"policy", DescribeRetentionPolicy(o.policy)},
                                              {"dry_run", o.dry_run},
                                              {"points", std::move(points)},
                                              {"problems", std::move(problems)},
                                              {"kept", r.kept},
                                              {"removed", r.removed},
                                              {"skipped", r.skipped}})
              << std::endl;
  } else {
    std::printf("%-30s %-28s %-21s %-7s %s\n", "POINT", "GROUP", "STARTED", "ACTION", "WHY");
    for (const auto& e : r.entries) {
      std::string why = e.decision.keep ? Join(e.decision.reasons) : e.outcome;
      std::printf("%-30s %-28s %-21s %-7s %s\n", e.decision.id.c_str(), e.decision.group.c_str(),
                  e.started_at.c_str(), action(e).c_str(), why.c_str());
    }
    for (const auto& p : r.problems) std::printf("BAD %s: %s (not removed)\n", p.entry.c_str(), p.message.c_str());
    const size_t to_remove = r.entries.size() - r.kept;
    if (o.dry_run) {
      std::printf("dry run (%s): %zu kept, %zu would be removed\n", DescribeRetentionPolicy(o.policy).c_str(), r.kept,
                  to_remove);
    } else {
      std::printf("pruned (%s): %zu kept, %zu removed, %zu skipped%s\n", DescribeRetentionPolicy(o.policy).c_str(),
                  r.kept, r.removed, r.skipped, r.skipped ? " (in use or locked: the next prune tries again)" : "");
    }
    if (r.removed) std::printf("their chunks stay until garbage collection\n");
  }
  return r.failure ? ExitCodeFor(r.failure->kind()) : 0;
}

int RemoveCommand(const Arguments& a) {
  std::string id = a.Require("point");
  auto repo = OpenRepo(a);
  repo->points().Remove(id, Now());
  LogInfo("removed restore point " + id + " (its chunks stay until garbage collection)");
  return 0;
}

int LockCommand(const Arguments& a) {
  std::string id = a.Require("point");
  if (a.Has("days") == a.Has("for")) {
    throw Error(ErrorKind::kBadInput, "give how long to lock the point as exactly one of --days N or --for DURATION");
  }
  int64_t seconds = 0;
  if (auto days = a.GetInt("days", 1, 36500)) seconds = *days * 86400;
  if (auto d = a.GetDuration("for")) {
    if (d->count() % 1000 != 0) throw Error(ErrorKind::kBadInput, "option --for: a lock lasts whole seconds");
    seconds = d->count() / 1000;
  }
  auto repo = OpenRepo(a);
  const int64_t now = Now();
  PointLock lock = repo->points().SetLock(id, now + seconds, a.Get("reason").value_or(""), now);
  std::cout << id << " locked until " << FormatRfc3339(lock.locked_until) << std::endl;
  return 0;
}

}  // namespace ferry::cli
