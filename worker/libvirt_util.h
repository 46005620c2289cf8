// Internal helpers for the libvirt host and restore: owning handles, the
// last libvirt error as a ferry::Error, XML parsing and escaping.
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <boost/property_tree/ptree.hpp>
#include <memory>
#include <string>

namespace ferry::worker {

template <typename T>
struct VirDeleter;
template <>
struct VirDeleter<virConnect> {
  void operator()(virConnectPtr p) const { virConnectClose(p); }
};
template <>
struct VirDeleter<virDomain> {
  void operator()(virDomainPtr p) const { virDomainFree(p); }
};
template <>
struct VirDeleter<virDomainCheckpoint> {
  void operator()(virDomainCheckpointPtr p) const { virDomainCheckpointFree(p); }
};
template <>
struct VirDeleter<virStoragePool> {
  void operator()(virStoragePoolPtr p) const { virStoragePoolFree(p); }
};
template <>
struct VirDeleter<virStorageVol> {
  void operator()(virStorageVolPtr p) const { virStorageVolFree(p); }
};
template <>
struct VirDeleter<virStream> {
  void operator()(virStreamPtr p) const { virStreamFree(p); }
};
template <>
struct VirDeleter<virNetwork> {
  void operator()(virNetworkPtr p) const { virNetworkFree(p); }
};
template <typename T>
using VirPtr = std::unique_ptr<T, VirDeleter<T>>;

// The last libvirt error's message ("unknown libvirt error" if none).
std::string LibvirtError();
[[noreturn]] void ThrowLibvirt(const std::string& what);

// Opens a connection; kNotFound/kRetryable with libvirt's reason otherwise.
VirPtr<virConnect> Connect(const std::string& uri);
// By name or UUID; kNotFound naming the domain.
VirPtr<virDomain> LookupDomain(virConnectPtr conn, const std::string& name);
std::string DomainXmlDesc(virDomainPtr dom, unsigned int flags);
std::string DomainStateName(int state);

boost::property_tree::ptree ParseXml(const std::string& xml, const std::string& what);
std::string WriteXml(const boost::property_tree::ptree& tree);
std::string XmlEscape(const std::string& text);

}  // namespace ferry::worker
