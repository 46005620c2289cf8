#include "libvirt_util.h"

#include <boost/property_tree/xml_parser.hpp>
#include <mutex>
#include <sstream>

#include "ferry/common/error.h"

namespace pt = boost::property_tree;

namespace ferry::worker {

namespace {
// libvirt prints every error to stderr by default; Ferry reports them itself.
void SilentErrorHandler(void*, virErrorPtr) {}
}  // namespace

std::string LibvirtError() {
  const char* m = virGetLastErrorMessage();
  return m && *m ? m : "unknown libvirt error";
}

void ThrowLibvirt(const std::string& what) {
  virErrorPtr e = virGetLastError();
  ErrorKind kind = ErrorKind::kEnvironment;
  if (e && (e->code == VIR_ERR_NO_DOMAIN || e->code == VIR_ERR_NO_DOMAIN_CHECKPOINT)) kind = ErrorKind::kNotFound;
  if (e && (e->code == VIR_ERR_OPERATION_INVALID || e->code == VIR_ERR_OPERATION_FAILED)) kind = ErrorKind::kRetryable;
  throw Error(kind, what + ": " + LibvirtError());
}

VirPtr<virConnect> Connect(const std::string& uri) {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
  });
  virConnectPtr c = virConnectOpen(uri.c_str());
  if (!c) {
    throw Error(ErrorKind::kNotFound, "cannot connect to libvirt at " + uri + ": " + LibvirtError() +
                                          " (is libvirtd running?)");
  }
  return VirPtr<virConnect>(c);
}

VirPtr<virDomain> LookupDomain(virConnectPtr conn, const std::string& name) {
  virDomainPtr d = virDomainLookupByName(conn, name.c_str());
  if (!d) {
    virResetLastError();
    d = virDomainLookupByUUIDString(conn, name.c_str());
  }
  if (!d) {
    virResetLastError();
    throw Error(ErrorKind::kNotFound, "libvirt has no domain '" + name + "'");
  }
  return VirPtr<virDomain>(d);
}

std::string DomainXmlDesc(virDomainPtr dom, unsigned int flags) {
  char* raw = virDomainGetXMLDesc(dom, flags);
  if (!raw) ThrowLibvirt("reading a domain's XML");
  std::string xml = raw;
  free(raw);
  return xml;
}

std::string DomainStateName(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: return "running";
    case VIR_DOMAIN_BLOCKED: return "blocked";
    case VIR_DOMAIN_PAUSED: return "paused";
    case VIR_DOMAIN_SHUTDOWN: return "shutting down";
    case VIR_DOMAIN_SHUTOFF: return "shut off";
    case VIR_DOMAIN_CRASHED: return "crashed";
    case VIR_DOMAIN_PMSUSPENDED: return "suspended";
    default: return "unknown";
  }
}

pt::ptree ParseXml(const std::string& xml, const std::string& what) {
  pt::ptree tree;
  std::istringstream in(xml);
  try {
    pt::read_xml(in, tree);
  } catch (const pt::xml_parser_error& e) {
    throw Error(ErrorKind::kCorrupt, what + " is not valid XML: " + e.what());
  }
  return tree;
}

std::string WriteXml(const pt::ptree& tree) {
  std::ostringstream out;
  pt::write_xml(out, tree, pt::xml_writer_make_settings<std::string>(' ', 2));
  return out.str();
}

std::string XmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace ferry::worker
