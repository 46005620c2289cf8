#include "ferry/common/point_check.h"

#include <boost/json.hpp>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/manifest.h"

namespace ferry {

namespace json = boost::json;

std::string PointCheckToJson(const PointCheck& c) {
  json::object o{{"format", std::string(kPointCheckFamily) + "-v" + std::to_string(kPointCheckVersion)},
                 {"point", c.point},
                 {"checked_at", c.checked_at},
                 {"verified_since", c.verified_since},
                 {"result", c.ok ? "ok" : "damaged"},
                 {"problems", c.problems},
                 {"first_problem", c.first_problem},
                 {"chunks_read", c.chunks_read},
                 {"chunks_skipped", c.chunks_skipped}};
  return SealJson(json::serialize(o), "check_sha256");
}

PointCheck PointCheckFromJson(const std::string& text, const std::string& source) {
  CheckSealedJson(text, "check_sha256", "check record " + source);
  json::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec || !root.is_object()) throw Error(ErrorKind::kCorrupt, "check record " + source + " is not a JSON object");
  JsonReader r(root.as_object(), "", CorruptFileFail("check record " + source));
  CheckFormatName(*r.String("format", true), kPointCheckFamily, kPointCheckVersion, "check record " + source);
  PointCheck c;
  c.point = *r.String("point", true);
  c.checked_at = *r.Int("checked_at", true, 0, INT64_MAX);
  c.verified_since = *r.Int("verified_since", true, 0, c.checked_at);
  std::string result = *r.String("result", true);
  if (result != "ok" && result != "damaged") r.Fail("result", "is neither \"ok\" nor \"damaged\"");
  c.ok = result == "ok";
  c.problems = *r.Unsigned("problems", true);
  c.first_problem = *r.String("first_problem", true, 4096);
  c.chunks_read = *r.Unsigned("chunks_read", true);
  c.chunks_skipped = *r.Unsigned("chunks_skipped", true);
  if (c.ok != (c.problems == 0)) r.Fail("problems", "does not agree with \"result\"");
  r.String("check_sha256", true);  // checked above
  r.Finish();
  return c;
}

}  // namespace ferry
