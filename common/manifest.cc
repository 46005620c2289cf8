#include "ferry/common/manifest.h"

#include <boost/json.hpp>
#include <ctime>

#include <set>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/ids.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/version.h"

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

std::string WriterName() { return VersionLine("ferry"); }

std::string NowRfc3339() { return FormatUtcNow("%Y-%m-%dT%H:%M:%SZ"); }

namespace {

// A v2 manifest is  <JSON object without its closing brace>
//                   ,"manifest_sha256":"<64 hex>"}<newline>
// and the 64 hex digits are the SHA-256 of the file without them. Other small
// records (a point's lock) use the same layout under their own member name.
constexpr std::string_view kChecksumTrailer = "\"}\n";

std::string ChecksumMember(std::string_view member) { return ",\"" + std::string(member) + "\":\""; }

Digest SealChecksum(std::string_view head, std::string_view tail) {
  Sha256Stream sha;
  sha.Update(head.data(), head.size());
  sha.Update(tail.data(), tail.size());
  return sha.Finish();
}

// Whether the text ends the way a checksummed record does.
bool HasChecksumTrailer(std::string_view text, std::string_view member_name) {
  const std::string member = ChecksumMember(member_name);
  const size_t tail = kChecksumTrailer.size(), hex = 64;
  return text.size() >= member.size() + hex + tail && text.ends_with(kChecksumTrailer) &&
         text.substr(text.size() - tail - hex - member.size(), member.size()) == member;
}

}  // namespace

std::string SealJson(std::string object_text, std::string_view member) {
  if (object_text.empty() || object_text.back() != '}') throw Error(ErrorKind::kInternal, "SealJson: not a JSON object");
  object_text.pop_back();  // the closing brace
  object_text += ChecksumMember(member);
  Digest sha = SealChecksum(object_text, kChecksumTrailer);
  return object_text + sha.Hex() + std::string(kChecksumTrailer);
}

void CheckSealedJson(std::string_view text, std::string_view member, const std::string& what) {
  auto bad = [&](const std::string& why) { return Error(ErrorKind::kCorrupt, what + ": " + why); };
  const size_t tail = kChecksumTrailer.size(), hex = 64;
  if (!HasChecksumTrailer(text, member)) throw bad("does not end in its checksum (truncated or changed)");
  std::string_view digits = text.substr(text.size() - tail - hex, hex);
  Digest recorded;
  try {
    recorded = Digest::FromHex(digits);
  } catch (const Error&) {
    throw bad("checksum is not a SHA-256 hex digest");
  }
  if (recorded.Hex() != digits) throw bad("checksum is not in lowercase hex");  // every bit counts
  if (SealChecksum(text.substr(0, text.size() - tail - hex), kChecksumTrailer) != recorded) {
    throw bad("checksum does not match its contents (the file was changed or damaged)");
  }
}

namespace {

constexpr char kManifestChecksum[] = "manifest_sha256";

void CheckManifestChecksum(std::string_view text, const std::string& source) {
  CheckSealedJson(text, kManifestChecksum, "manifest " + source);
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
    if (!d.index_hmac.empty()) disk["index_hmac"] = d.index_hmac;  // optional: encrypted repositories
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
  // Optional (readers of v2 ignore members they do not know), inside the checksum.
  if (!m.writer.empty()) root["writer"] = m.writer;
  // The checksum covers every byte of the file but its own 64 hex digits.
  return SealJson(json::serialize(root), kManifestChecksum);
}

namespace {


}  // namespace

RestorePointManifest ManifestFromJson(const std::string& text, const std::string& source) {
  // The checksum is checked before anything in the text is believed, the
  // "format" member included: a flipped version digit must read as damage,
  // not as a v1 manifest (which has no checksum) or a newer one.
  const bool sealed = HasChecksumTrailer(text, kManifestChecksum);
  if (sealed) CheckManifestChecksum(text, source);
  json::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec) throw Error(ErrorKind::kCorrupt, "manifest " + source + " is not valid JSON: " + ec.message());
  if (!root.is_object()) throw Error(ErrorKind::kCorrupt, "manifest " + source + " is not a JSON object");
  JsonReader r(root.as_object(), "", CorruptFileFail("manifest " + source));
  constexpr size_t kText = 4096;  // names, paths, reasons
  auto plain_file_name = [](JsonReader& reader, const char* key) {
    std::string name = *reader.String(key, true, kText);
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') reader.Fail(key, "is not a plain file name");
    return name;
  };
  auto digest = [](JsonReader& reader, const char* key) {
    std::string hex = *reader.String(key, true);
    try {
      return Digest::FromHex(hex);
    } catch (const Error&) {
      reader.Fail(key, "is not a SHA-256 hex digest");
    }
  };
  RestorePointManifest m;
  m.format_version = CheckFormatName(*r.String("format", true), kManifestFamily, kManifestVersion, "manifest " + source);
  if (m.format_version >= 2 && !sealed) CheckManifestChecksum(text, source);  // throws: no checksum
  if (m.format_version == 1 && sealed) r.Fail("format", "says v1, but the manifest carries a v2 checksum");
  if (sealed) r.String("manifest_sha256", true);  // checked above
  m.id = *r.String("id", true);
  // Members added within v1 are optional: points written before them lack them.
  m.chain = r.String("chain", false).value_or("");
  m.writer = r.String("writer", false, kText).value_or("");
  JsonReader vm = *r.Object("vm", true);
  m.vm.name = *vm.String("name", true, kText);
  m.vm.uuid = *vm.String("uuid", true);
  m.vm.hypervisor = *vm.String("hypervisor", true);
  m.started_at = *r.String("started_at", true);
  m.completed_at = *r.String("completed_at", true);
  std::vector<JsonReader> disks = *r.ObjectList("disks", true);
  for (JsonReader& d : disks) {
    DiskRecord rec;
    rec.name = *d.String("name", true, kText);
    rec.size = *d.Unsigned("size", true);
    rec.chunk_size = static_cast<uint32_t>(*d.Int("chunk_size", true, 1, 64 << 20));
    rec.source_format = *d.String("source_format", true);
    rec.index_file = plain_file_name(d, "index");
    rec.index_sha256 = digest(d, "index_sha256");
    rec.index_hmac = d.String("index_hmac", false).value_or("");
    JsonReader st = *d.Object("stats", true);
    rec.chunks = *st.Unsigned("chunks", true);
    rec.zero_chunks = *st.Unsigned("zero_chunks", true);
    rec.new_chunks = *st.Unsigned("new_chunks", true);
    rec.reused_chunks = *st.Unsigned("reused_chunks", true);
    rec.read_bytes = *st.Unsigned("read_bytes", true);
    rec.stored_bytes = *st.Unsigned("stored_bytes", true);
    rec.unchanged_chunks = st.Unsigned("unchanged_chunks", false).value_or(0);
    rec.healed_chunks = st.Unsigned("healed_chunks", false).value_or(0);
    if (std::optional<JsonReader> c = d.Object("cbt", false)) {
      rec.cbt.mode = *c->String("mode", true);
      if (rec.cbt.mode != "full" && rec.cbt.mode != "incremental") c->Fail("mode", "is not full or incremental");
      rec.cbt.reason = *c->String("reason", true, kText);
      rec.cbt.bitmap = *c->String("bitmap", true);
      rec.cbt.generation = *c->String("generation", true);
      rec.cbt.disk_identity = *c->String("disk_identity", true, kText);
    }
    m.disks.push_back(std::move(rec));
  }
  if (auto files = r.ObjectList("config_files", false)) {
    for (JsonReader& f : *files) {
      ConfigFileRecord rec;
      rec.kind = *f.String("kind", true);
      rec.name = plain_file_name(f, "name");
      rec.origin = *f.String("origin", true, kText);
      rec.sha256 = digest(f, "sha256");
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
