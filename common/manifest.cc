#include "ferry/common/manifest.h"

#include <boost/json.hpp>
#include <ctime>

#include <set>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/ids.h"

namespace json = boost::json;

namespace ferry {

const DiskRecord* RestorePointManifest::FindDisk(const std::string& name) const {
  for (const auto& d : disks) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

const ConfigFileRecord* RestorePointManifest::FindConfig(const std::string& kind) const {
  for (const auto& f : config_files) {
    if (f.kind == kind) return &f;
  }
  return nullptr;
}

std::string NowRfc3339() { return FormatUtcNow("%Y-%m-%dT%H:%M:%SZ"); }

namespace {

// A v2 manifest is  <JSON object without its closing brace>
//                   ,"manifest_sha256":"<64 hex>"}<newline>
// and the 64 hex digits are the SHA-256 of the file without them.
constexpr std::string_view kChecksumMember = ",\"manifest_sha256\":\"";
constexpr std::string_view kChecksumTrailer = "\"}\n";

Digest ManifestChecksum(std::string_view head, std::string_view tail) {
  Sha256Stream sha;
  sha.Update(head.data(), head.size());
  sha.Update(tail.data(), tail.size());
  return sha.Finish();
}

// Whether the text ends the way a checksummed manifest does.
bool HasChecksumTrailer(std::string_view text) {
  const size_t tail = kChecksumTrailer.size(), hex = 64, member = kChecksumMember.size();
  return text.size() >= member + hex + tail && text.ends_with(kChecksumTrailer) &&
         text.substr(text.size() - tail - hex - member, member) == kChecksumMember;
}

// Checks a v2 manifest's checksum; throws kCorrupt naming `source`.
void CheckManifestChecksum(std::string_view text, const std::string& source) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kCorrupt, "manifest " + source + ": " + why);
  };
  const size_t tail = kChecksumTrailer.size(), hex = 64;
  if (!HasChecksumTrailer(text)) throw bad("does not end in its checksum (truncated or changed)");
  std::string_view digits = text.substr(text.size() - tail - hex, hex);
  Digest recorded;
  try {
    recorded = Digest::FromHex(digits);
  } catch (const Error&) {
    throw bad("checksum is not a SHA-256 hex digest");
  }
  if (recorded.Hex() != digits) throw bad("checksum is not in lowercase hex");  // every bit counts
  if (ManifestChecksum(text.substr(0, text.size() - tail - hex), kChecksumTrailer) != recorded) {
    throw bad("checksum does not match its contents (the manifest was changed or damaged)");
  }
}

}  // namespace

std::string ManifestToJson(const RestorePointManifest& m) {
  json::array disks;
  for (const auto& d : m.disks) {
    json::object disk{
        {"name", d.name},
        {"size", d.size},
        {"chunk_size", d.chunk_size},
        {"source_format", d.source_format},
        {"index", d.index_file},
        {"index_sha256", d.index_sha256.Hex()},
        {"stats", json::object{{"chunks", d.chunks},
                               {"zero_chunks", d.zero_chunks},
                               {"new_chunks", d.new_chunks},
                               {"reused_chunks", d.reused_chunks},
                               {"read_bytes", d.read_bytes},
                               {"stored_bytes", d.stored_bytes},
                               {"unchanged_chunks", d.unchanged_chunks},
                               {"healed_chunks", d.healed_chunks}}},
    };
    if (!d.cbt.mode.empty()) {
      disk["cbt"] = json::object{{"mode", d.cbt.mode},
                                 {"reason", d.cbt.reason},
                                 {"bitmap", d.cbt.bitmap},
                                 {"generation", d.cbt.generation},
                                 {"disk_identity", d.cbt.disk_identity}};
    }
    disks.push_back(std::move(disk));
  }
  json::object root{
      {"format", std::string(kManifestFamily) + "-v" + std::to_string(kManifestVersion)},
      {"id", m.id},
      {"chain", m.chain},
      {"vm", json::object{{"name", m.vm.name}, {"uuid", m.vm.uuid}, {"hypervisor", m.vm.hypervisor}}},
      {"started_at", m.started_at},
      {"completed_at", m.completed_at},
      {"disks", std::move(disks)},
  };
  if (!m.config_files.empty()) {
    json::array files;
    for (const auto& f : m.config_files) {
      files.push_back(json::object{{"kind", f.kind}, {"name", f.name}, {"origin", f.origin}, {"sha256", f.sha256.Hex()}});
    }
    root["config_files"] = std::move(files);
  }
  // The checksum covers every byte of the file but its own 64 hex digits.
  std::string text = json::serialize(root);
  text.pop_back();  // the closing brace
  text += kChecksumMember;
  Digest sha = ManifestChecksum(text, kChecksumTrailer);
  return text + sha.Hex() + std::string(kChecksumTrailer);
}

namespace {

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void Fail(const std::string& member, const std::string& why) const {
    throw Error(ErrorKind::kCorrupt, "manifest " + source_ + ": member '" + member + "' " + why);
  }
  const json::value& Member(const json::object& o, const std::string& key,
                            const std::string& path) const {
    auto it = o.find(key);
    if (it == o.end()) Fail(path + key, "is missing");
    return it->value();
  }
  std::string String(const json::object& o, const std::string& key,
                     const std::string& path = "") const {
    const auto& v = Member(o, key, path);
    if (!v.is_string()) Fail(path + key, "is not a string");
    return std::string(v.as_string());
  }
  uint64_t Unsigned(const json::object& o, const std::string& key,
                    const std::string& path = "") const {
    const auto& v = Member(o, key, path);
    if (v.is_uint64()) return v.as_uint64();
    if (v.is_int64() && v.as_int64() >= 0) return static_cast<uint64_t>(v.as_int64());
    Fail(path + key, "is not a non-negative integer");
  }
  const json::object& Object(const json::object& o, const std::string& key,
                             const std::string& path = "") const {
    const auto& v = Member(o, key, path);
    if (!v.is_object()) Fail(path + key, "is not an object");
    return v.as_object();
  }

 private:
  std::string source_;
};

}  // namespace

RestorePointManifest ManifestFromJson(const std::string& text, const std::string& source) {
  // The checksum is checked before anything in the text is believed, the
  // "format" member included: a flipped version digit must read as damage,
  // not as a v1 manifest (which has no checksum) or a newer one.
  const bool sealed = HasChecksumTrailer(text);
  if (sealed) CheckManifestChecksum(text, source);
  json::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec) throw Error(ErrorKind::kCorrupt, "manifest " + source + " is not valid JSON: " + ec.message());
  if (!root.is_object()) throw Error(ErrorKind::kCorrupt, "manifest " + source + " is not a JSON object");
  const auto& o = root.as_object();
  Reader r(source);
  RestorePointManifest m;
  m.format_version = CheckFormatName(r.String(o, "format"), kManifestFamily, kManifestVersion, "manifest " + source);
  if (m.format_version >= 2 && !sealed) CheckManifestChecksum(text, source);  // throws: no checksum
  if (m.format_version == 1 && sealed) r.Fail("format", "says v1, but the manifest carries a v2 checksum");
  m.id = r.String(o, "id");
  // Members added within v1 are optional: points written before them lack them.
  if (o.contains("chain")) m.chain = r.String(o, "chain");
  const auto& vm = r.Object(o, "vm");
  m.vm.name = r.String(vm, "name", "vm.");
  m.vm.uuid = r.String(vm, "uuid", "vm.");
  m.vm.hypervisor = r.String(vm, "hypervisor", "vm.");
  m.started_at = r.String(o, "started_at");
  m.completed_at = r.String(o, "completed_at");
  const auto& disks = r.Member(o, "disks", "");
  if (!disks.is_array()) r.Fail("disks", "is not an array");
  for (size_t i = 0; i < disks.as_array().size(); ++i) {
    std::string path = "disks[" + std::to_string(i) + "].";
    const auto& dv = disks.as_array()[i];
    if (!dv.is_object()) r.Fail(path, "is not an object");
    const auto& d = dv.as_object();
    DiskRecord rec;
    rec.name = r.String(d, "name", path);
    rec.size = r.Unsigned(d, "size", path);
    uint64_t cs = r.Unsigned(d, "chunk_size", path);
    if (cs == 0 || cs > (64u << 20)) r.Fail(path + "chunk_size", "is out of range");
    rec.chunk_size = static_cast<uint32_t>(cs);
    rec.source_format = r.String(d, "source_format", path);
    rec.index_file = r.String(d, "index", path);
    if (rec.index_file.empty() || rec.index_file.find('/') != std::string::npos ||
        rec.index_file[0] == '.') {
      r.Fail(path + "index", "is not a plain file name");
    }
    try {
      rec.index_sha256 = Digest::FromHex(r.String(d, "index_sha256", path));
    } catch (const Error&) {
      r.Fail(path + "index_sha256", "is not a SHA-256 hex digest");
    }
    const auto& s = r.Object(d, "stats", path);
    std::string sp = path + "stats.";
    rec.chunks = r.Unsigned(s, "chunks", sp);
    rec.zero_chunks = r.Unsigned(s, "zero_chunks", sp);
    rec.new_chunks = r.Unsigned(s, "new_chunks", sp);
    rec.reused_chunks = r.Unsigned(s, "reused_chunks", sp);
    rec.read_bytes = r.Unsigned(s, "read_bytes", sp);
    rec.stored_bytes = r.Unsigned(s, "stored_bytes", sp);
    if (s.contains("unchanged_chunks")) rec.unchanged_chunks = r.Unsigned(s, "unchanged_chunks", sp);
    if (s.contains("healed_chunks")) rec.healed_chunks = r.Unsigned(s, "healed_chunks", sp);
    if (d.contains("cbt")) {
      const auto& c = r.Object(d, "cbt", path);
      std::string cp = path + "cbt.";
      rec.cbt.mode = r.String(c, "mode", cp);
      if (rec.cbt.mode != "full" && rec.cbt.mode != "incremental") r.Fail(cp + "mode", "is not full or incremental");
      rec.cbt.reason = r.String(c, "reason", cp);
      rec.cbt.bitmap = r.String(c, "bitmap", cp);
      rec.cbt.generation = r.String(c, "generation", cp);
      rec.cbt.disk_identity = r.String(c, "disk_identity", cp);
    }
    m.disks.push_back(std::move(rec));
  }
  if (o.contains("config_files")) {
    const auto& files = r.Member(o, "config_files", "");
    if (!files.is_array()) r.Fail("config_files", "is not an array");
    for (size_t i = 0; i < files.as_array().size(); ++i) {
      std::string path = "config_files[" + std::to_string(i) + "].";
      if (!files.as_array()[i].is_object()) r.Fail(path, "is not an object");
      const auto& f = files.as_array()[i].as_object();
      ConfigFileRecord rec;
      rec.kind = r.String(f, "kind", path);
      rec.name = r.String(f, "name", path);
      if (rec.name.empty() || rec.name.find('/') != std::string::npos || rec.name[0] == '.') {
        r.Fail(path + "name", "is not a plain file name");
      }
      rec.origin = r.String(f, "origin", path);
      try {
        rec.sha256 = Digest::FromHex(r.String(f, "sha256", path));
      } catch (const Error&) {
        r.Fail(path + "sha256", "is not a SHA-256 hex digest");
      }
      m.config_files.push_back(std::move(rec));
    }
  }
  // One name, one thing: a disk named twice would make "restore --disk X"
  // ambiguous, two records sharing a file would restore one from the other.
  std::set<std::string> disk_names, file_names;
  for (const auto& d : m.disks) {
    if (!disk_names.insert(d.name).second) r.Fail("disks", "names disk '" + d.name + "' twice");
    if (!file_names.insert(d.index_file).second) r.Fail("disks", "uses file '" + d.index_file + "' twice");
  }
  for (const auto& f : m.config_files) {
    if (!file_names.insert(f.name).second) r.Fail("config_files", "uses file '" + f.name + "' twice");
  }
  return m;
}

}  // namespace ferry
