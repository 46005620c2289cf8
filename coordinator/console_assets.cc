#include "ferry/coordinator/console_assets.h"

#include <filesystem>
#include <system_error>

#include <boost/json.hpp>

#include "ferry/common/checksum.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/coordinator/security_headers.h"

namespace ferry::coordinator {

namespace fs = std::filesystem;

namespace {

http::Response ErrorJson(int status, const std::string& kind, const std::string& message) {
  http::Response r;
  r.status = status;
  r.body = boost::json::serialize(
      boost::json::object{{"error", boost::json::object{{"kind", kind}, {"message", message}}}});
  return r;
}

bool Within(const fs::path& root, const fs::path& p) {
  auto [r, q] = std::mismatch(root.begin(), root.end(), p.begin(), p.end());
  return r == root.end();
}

// A path a browser sends for an asset: no empty, "." or ".." segment (also
// when percent-encoded: the server decodes before this), no backslash, no
// NUL, no control character.
bool IsCleanPath(const std::string& path) {
  if (path.empty() || path[0] != '/') return false;
  for (char ch : path)
    if (ch == '\\' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) return false;
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string segment = path.substr(start, end - start);
    // An empty last segment is a directory ("/", "/docs/"): its index.html.
    if (segment == "." || segment == ".." || (segment.empty() && end != path.size())) return false;
    start = end + 1;
  }
  return true;
}

bool EtagMatches(const std::string& if_none_match, const std::string& etag) {
  size_t start = 0;
  while (start < if_none_match.size()) {
    size_t end = if_none_match.find(',', start);
    if (end == std::string::npos) end = if_none_match.size();
    std::string tag = if_none_match.substr(start, end - start);
    while (!tag.empty() && (tag.front() == ' ' || tag.front() == '\t')) tag.erase(0, 1);
    while (!tag.empty() && (tag.back() == ' ' || tag.back() == '\t')) tag.pop_back();
    if (tag.rfind("W/", 0) == 0) tag.erase(0, 2);  // weak comparison (RFC 9110, 13.1.2)
    if (tag == "*" || tag == etag) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

std::string ConsoleAssets::ContentType(const std::string& name) {
  static const std::map<std::string, std::string> kTypes = {
      {".html", "text/html; charset=utf-8"},  {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},          {".map", "application/json"},
      {".svg", "image/svg+xml"},              {".png", "image/png"},
      {".ico", "image/x-icon"},               {".woff2", "font/woff2"},
      {".woff", "font/woff"},                 {".txt", "text/plain; charset=utf-8"},
      {".webmanifest", "application/manifest+json"}};
  std::string ext = fs::path(name).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  auto it = kTypes.find(ext);
  return it == kTypes.end() ? "application/octet-stream" : it->second;
}

ConsoleAssets ConsoleAssets::Load(const std::string& dir) {
  ConsoleAssets assets;
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return assets;
  const fs::path root = fs::canonical(dir);
  auto bad = [&](const std::string& why) { return Error(ErrorKind::kBadInput, "--console-dir " + dir + ": " + why); };
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const fs::path& p = it->path();
    const std::string rel = p.lexically_relative(root).generic_string();
    fs::file_status st = it->symlink_status();
    if (fs::is_symlink(st)) {
      // Followed only within the directory: a link out of it would serve
      // whatever it points at.
      fs::path target = fs::canonical(p, ec);
      if (ec || !Within(root, target))
        throw bad(rel + " is a symlink that leads out of the directory (or nowhere)");
      if (!fs::is_regular_file(target)) throw bad(rel + " is a symlink to something other than a file");
    } else if (fs::is_directory(st)) {
      continue;
    } else if (!fs::is_regular_file(st)) {
      throw bad(rel + " is neither a file nor a directory");
    }
    File f;
    f.body = ReadWholeFile(p.string());
    f.content_type = ContentType(rel);
    f.etag = "\"" + Sha256(f.body.data(), f.body.size()).Hex().substr(0, 32) + "\"";
    assets.files_.emplace(rel, std::move(f));
  }
  if (!assets.files_.count("index.html")) throw bad("no index.html (the output of coordinator/console/build.mjs?)");
  return assets;
}

http::Response ConsoleAssets::Serve(const http::Request& request) const {
  if (request.method != "GET" && request.method != "HEAD") {
    http::Response r = ErrorJson(405, "method_not_allowed", request.method + " is not allowed on " + request.path);
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }
  if (files_.empty())
    return ErrorJson(404, "not_found",
                     "no such route: " + request.path +
                         " (this coordinator serves no web console: see --console-dir, docs/coordinator.md)");
  if (!IsCleanPath(request.path))
    return ErrorJson(400, "bad_input", "a path with '.' or '..' segments, '//', a backslash or a control character");
  std::string rel = request.path.substr(1);
  if (rel.empty() || rel.back() == '/') rel += "index.html";
  auto it = files_.find(rel);
  if (it == files_.end()) {
    // A client-side route of the single-page app (/jobs/3): the app.
    const std::string last = request.path.substr(request.path.rfind('/') + 1);  // "" for /jobs/
    if (last.find('.') != std::string::npos) return ErrorJson(404, "not_found", "no such file: " + request.path);
    it = files_.find("index.html");
  }
  const File& f = it->second;
  http::Response r;
  r.content_type = f.content_type;
  // No file name carries a hash of its content, so every file is
  // revalidated; the ETag makes that a 304 without the body.
  r.headers.emplace_back("Cache-Control", "no-cache");
  r.headers.emplace_back("ETag", f.etag);
  // Redoc (the API reference page) sets styles inline; no other page may.
  if (it->first == "api.html")
    r.headers.emplace_back("Content-Security-Policy", kApiDocsContentSecurityPolicy);
  if (!request.if_none_match.empty() && EtagMatches(request.if_none_match, f.etag)) {
    r.status = 304;
    return r;
  }
  r.body = f.body;
  return r;
}

}  // namespace ferry::coordinator
