// ConsoleAssets: the web console's static files (coordinator/console, built
// into share/ferry/console), served by the coordinator at / (docs/coordinator.md,
// "The web console").
//
// The files are small (about 1.5 MB in all, most of it Redoc), so they are read once, at
// start, into memory: serving never touches the file system, and a request
// path can only name a file that was loaded, so no path can escape the
// directory. Loading itself refuses what could: a symlink whose target lies
// outside the directory, anything but directories and regular files.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "ferry/http/server.h"

namespace ferry::coordinator {

class ConsoleAssets {
 public:
  // No console: every request is a 404 saying so.
  ConsoleAssets() = default;
  // Reads every file under `dir`. An empty or missing `dir` gives no console
  // (logged by the caller); throws ferry::Error kBadInput for a directory
  // without index.html, or one holding a symlink that leads out of it.
  static ConsoleAssets Load(const std::string& dir);

  bool empty() const { return files_.empty(); }
  size_t size() const { return files_.size(); }

  // GET or HEAD of a path outside /api, /healthz and /metrics (the caller
  // routes). A known file is served; a path that is not one and whose last
  // segment has no dot is a client-side route of the single-page app and
  // gets index.html; anything else is a 404. With If-None-Match matching the
  // file's ETag: 304.
  http::Response Serve(const http::Request& request) const;

  // The Content-Type for a file name, by its extension.
  static std::string ContentType(const std::string& name);

 private:
  struct File {
    std::string body, content_type, etag;
  };
  std::map<std::string, File> files_;  // by path relative to the directory, e.g. "index.html", "assets/app.js"
};

}  // namespace ferry::coordinator
