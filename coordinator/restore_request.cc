#include "ferry/coordinator/restore_request.h"

#include "ferry/common/error.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/json_input.h"

namespace json = boost::json;

namespace ferry::coordinator {
namespace {

using Type = RestoreTarget::Type;

const std::pair<const char*, Type> kTypes[] = {
    {"file", Type::kFile},
    {"libvirt_domain", Type::kLibvirtDomain},
    {"new_domain", Type::kNewDomain},
    {"original_domain", Type::kOriginalDomain},
};

Type ParseType(const std::string& field, const std::string& name) {
  for (const auto& [text, type] : kTypes)
    if (name == text) return type;
  throw FieldError(field, "'" + name + "' is not one of file, libvirt_domain, new_domain, original_domain");
}

// An absolute path on the target host: no NUL, not a directory name.
std::string AbsolutePath(FieldReader& f, const char* key, bool required) {
  std::optional<std::string> path = f.String(key, required, 4096);
  if (!path) return "";
  if (path->empty() || (*path)[0] != '/') f.Fail(key, "must be an absolute path on the target host");
  if (path->find('\0') != std::string::npos) f.Fail(key, "must not contain NUL");
  if (path->back() == '/') f.Fail(key, "must name a file, not a directory");
  return *path;
}

std::string Format(FieldReader& f, const char* fallback) {
  std::string format = f.String("format", false, 16).value_or(fallback);
  if (format != "raw" && format != "qcow2") f.Fail("format", "'" + format + "' is not one of raw, qcow2");
  return format;
}

// A libvirt name (domain, pool): anything libvirt takes but '/', within reason.
std::string LibvirtName(FieldReader& f, const char* key, bool required) {
  std::optional<std::string> name = f.String(key, required, 256);
  if (!name) return "";
  if (name->empty()) f.Fail(key, "must not be empty");
  if (name->find('/') != std::string::npos || name->find('\0') != std::string::npos)
    f.Fail(key, "must not contain '/' or NUL");
  return *name;
}

RestoreTarget ReadTarget(const json::value& value) {
  if (!value.is_object()) throw FieldError("target", "must be an object with a type (file, libvirt_domain, new_domain, original_domain)");
  FieldReader f(value.as_object(), "target");
  RestoreTarget t;
  t.type = ParseType("target.type", *f.String("type", true, 32));
  switch (t.type) {
    case Type::kFile:
      t.path = AbsolutePath(f, "path", true);
      t.format = Format(f, "raw");
      break;
    case Type::kLibvirtDomain:
      t.vm = LibvirtName(f, "vm", true);
      t.disk = f.Name("disk", false).value_or("");
      break;
    case Type::kNewDomain: {
      t.name = LibvirtName(f, "name", false);
      t.directory = AbsolutePath(f, "directory", false);
      t.pool = LibvirtName(f, "pool", false);
      if (!t.directory.empty() && !t.pool.empty()) f.Fail("pool", "give either directory or pool, not both");
      if (t.directory.empty() && t.pool.empty())
        throw FieldError("target.directory", "is required (or pool): where the new domain's disk images go");
      t.format = Format(f, "qcow2");
      t.keep_macs = f.Bool("keep_macs", false).value_or(false);
      break;
    }
    case Type::kOriginalDomain:
      if (!f.Bool("confirm", true).value())
        f.Fail("confirm", "must be true: restoring over the original domain powers it off and replaces its disks");
      break;
  }
  f.Finish();  // members of another type are unknown here
  return t;
}

}  // namespace

const char* RestoreTargetTypeName(Type type) {
  for (const auto& [text, t] : kTypes)
    if (t == type) return text;
  return "?";
}

bool RestoresWholeVm(Type type) { return type == Type::kNewDomain || type == Type::kOriginalDomain; }

RestoreRequest ParseRestoreRequest(const std::string& body) {
  json::object o = ParseRequestObject(body);
  FieldReader f(o, "");
  RestoreRequest r;
  r.point = *f.Int("point", true, 1, INT64_MAX);
  r.disk = f.Name("disk", false).value_or("");
  r.target = ReadTarget(*f.Member("target", true));
  const char* type = RestoreTargetTypeName(r.target.type);
  if (RestoresWholeVm(r.target.type) && !r.disk.empty())
    throw FieldError("disk", std::string("target type ") + type +
                                 " restores the whole VM: leave disk out (one disk goes to type file or libvirt_domain)");
  if (!RestoresWholeVm(r.target.type) && r.disk.empty())
    throw FieldError("disk", std::string("is required: target type ") + type + " restores one disk of the point");
  // Over the original, the host defaults to the one the VM is on.
  bool host_required = r.target.type != Type::kOriginalDomain;
  if (host_required && !o.contains("host"))
    throw FieldError("host", "is required: the host the restore goes to (a worker there runs it)");
  r.host = f.Name("host", host_required).value_or("");
  if (const json::value* v = f.Member("retries", false)) {
    if (!v->is_object()) throw FieldError("retries", "must be an object {count, interval_s}");
    FieldReader retries(v->as_object(), "retries");
    r.retry_count = retries.Int("count", false, 0, 100).value_or(r.retry_count);
    r.retry_interval_s = retries.Int("interval_s", false, 0, 86400).value_or(r.retry_interval_s);
    retries.Finish();
  }
  f.Finish();
  return r;
}

json::object RestoreTargetToJson(const RestoreTarget& t) {
  json::object o{{"type", RestoreTargetTypeName(t.type)}};
  switch (t.type) {
    case Type::kFile:
      o["path"] = t.path;
      o["format"] = t.format;
      break;
    case Type::kLibvirtDomain:
      o["vm"] = t.vm;
      o["disk"] = t.disk;
      break;
    case Type::kNewDomain:
      o["name"] = t.name;
      if (!t.directory.empty()) o["directory"] = t.directory;
      if (!t.pool.empty()) o["pool"] = t.pool;
      o["format"] = t.format;
      o["keep_macs"] = t.keep_macs;
      break;
    case Type::kOriginalDomain:
      o["confirm"] = true;
      break;
  }
  return o;
}

RestoreTarget RestoreTargetFromJson(const json::value& value) {
  try {
    const json::object& o = value.as_object();
    auto text = [&](const char* key) {
      const json::value* v = o.if_contains(key);
      return v ? std::string(v->as_string()) : std::string();
    };
    RestoreTarget t;
    t.type = ParseType("type", text("type"));
    t.path = text("path");
    t.format = text("format");
    t.vm = text("vm");
    t.disk = text("disk");
    t.name = text("name");
    t.directory = text("directory");
    t.pool = text("pool");
    if (const json::value* v = o.if_contains("keep_macs")) t.keep_macs = v->as_bool();
    return t;
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInternal, "a stored restore target is malformed (" + std::string(e.what()) +
                                          "): " + json::serialize(value));
  }
}

std::string DescribeRestoreTarget(const RestoreTarget& t, const std::string& host) {
  switch (t.type) {
    case Type::kFile: return t.format + " image " + host + ":" + t.path;
    case Type::kLibvirtDomain: return "disk " + t.disk + " of domain " + t.vm + " on " + host;
    case Type::kNewDomain:
      return "new domain " + t.name + " on " + host + " (images in " +
             (t.pool.empty() ? t.directory : "pool " + t.pool) + ")";
    case Type::kOriginalDomain: return "the original domain on " + host;
  }
  return "?";
}

}  // namespace ferry::coordinator
