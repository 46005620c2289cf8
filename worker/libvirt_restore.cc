// Whole-VM restore onto a libvirt host (docs/cli.md, restore-vm).
#include <sys/stat.h>
#include <unistd.h>

#include <boost/property_tree/ptree.hpp>
#include <filesystem>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/worker/disk_restore.h"
#include "ferry/worker/libvirt_host.h"
#include "libvirt_util.h"

namespace pt = boost::property_tree;

namespace ferry::worker {

namespace {

std::string ReadPointFile(Repository& repo, const std::string& point, const ConfigFileRecord& rec) {
  return repo.points().ReadFile(point, rec);
}

bool DomainExists(virConnectPtr conn, const std::string& name) {
  virDomainPtr d = virDomainLookupByName(conn, name.c_str());
  if (!d) {
    virResetLastError();
    return false;
  }
  virDomainFree(d);
  return true;
}

// The target directory of a directory-backed storage pool.
std::string PoolDirectory(virConnectPtr conn, const std::string& pool_name) {
  virStoragePoolPtr pool = virStoragePoolLookupByName(conn, pool_name.c_str());
  if (!pool) {
    virResetLastError();
    throw Error(ErrorKind::kNotFound, "libvirt has no storage pool '" + pool_name + "'");
  }
  char* raw = virStoragePoolGetXMLDesc(pool, 0);
  virStoragePoolFree(pool);
  if (!raw) ThrowLibvirt("reading storage pool " + pool_name);
  std::string xml = raw;
  free(raw);
  pt::ptree tree = ParseXml(xml, "storage pool XML");
  std::string type = tree.get<std::string>("pool.<xmlattr>.type", "");
  std::string path = tree.get<std::string>("pool.target.path", "");
  if ((type != "dir" && type != "fs" && type != "netfs") || path.empty()) {
    throw Error(ErrorKind::kBadInput, "storage pool '" + pool_name + "' is of type '" + type +
                                          "'; restore-vm places images in directory-backed pools (dir, fs, netfs)");
  }
  return path;
}

void RefreshPool(virConnectPtr conn, const std::string& pool_name) {
  virStoragePoolPtr pool = virStoragePoolLookupByName(conn, pool_name.c_str());
  if (!pool || virStoragePoolRefresh(pool, 0) != 0) {
    LogWarning("refreshing storage pool " + pool_name + ": " + LibvirtError());
  }
  if (pool) virStoragePoolFree(pool);
}

}  // namespace

std::string RestoreLibvirtVm(Repository& repo, const LibvirtRestoreOptions& o) {
  RestorePointManifest m = repo.points().Load(o.point_id);
  std::unique_ptr<PointLease> lease = repo.points().Lease(o.point_id);  // for the whole restore
  const ConfigFileRecord* xml_rec = m.FindConfig("libvirt-domain-xml");
  if (!xml_rec) {
    throw Error(ErrorKind::kBadInput, "restore point " + o.point_id +
                                          " was not made on a libvirt host (it has no domain XML); restore its "
                                          "disks with ferry restore");
  }
  ImageFormat format = ParseImageFormat(o.format);
  pt::ptree tree = ParseXml(ReadPointFile(repo, o.point_id, *xml_rec), "the point's domain XML");
  pt::ptree& dom = tree.get_child("domain");
  std::string original = dom.get<std::string>("name", "");
  auto conn = Connect(o.uri);
  DiskRestoreOptions disk_options;
  disk_options.cancel = o.cancel;
  disk_options.key = o.key;
  // Over the original, each disk is built beside its image under this
  // suffix: unique per call (a daemon may run several restores at once).
  static std::atomic<uint64_t> calls{0};
  const std::string temp_suffix = ".ferry-restore-" + std::to_string(::getpid()) + "-" + std::to_string(++calls);

  // Disk targets in the XML -> where each restored image goes.
  struct DiskRestore {
    std::string disk, path;
    ImageFormat format;
  };
  std::vector<DiskRestore> restores;
  std::vector<std::string> created;                            // files to remove on failure
  std::string name;

  if (!o.overwrite) {
    name = o.name.empty() ? original + "-restored" : o.name;
    if (DomainExists(conn.get(), name)) {
      throw Error(ErrorKind::kBadInput, "a domain named '" + name + "' already exists at " + o.uri +
                                            " (give another --name, or --overwrite to replace the original)");
    }
    std::string dir_option = o.directory;
    if (!o.pool.empty()) {
      if (!dir_option.empty()) throw Error(ErrorKind::kBadInput, "give either --dir or --pool, not both");
      dir_option = PoolDirectory(conn.get(), o.pool);
    }
    if (dir_option.empty()) throw Error(ErrorKind::kBadInput, "restore-vm needs --dir or --pool for the new disk images");
    std::string dir = std::filesystem::absolute(dir_option).string();
    MakeDirectory(dir);
    dom.put("name", name);
    dom.erase("uuid");  // libvirt gives the new domain its own
    pt::ptree& devices = dom.get_child("devices");
    for (auto it = devices.begin(); it != devices.end();) {
      auto& [tag, node] = *it;
      if (tag == "interface" && !o.keep_macs) node.erase("mac");  // libvirt makes new ones
      if (tag == "disk" && node.get<std::string>("<xmlattr>.device", "disk") == "disk") {
        std::string target = node.get<std::string>("target.<xmlattr>.dev", "");
        if (!m.FindDisk(target)) {
          LogWarning("disk " + target + " of domain " + original + " is not in point " + o.point_id +
                     "; the restored domain will not have it");
          it = devices.erase(it);
          continue;
        }
        std::string path = dir + "/" + name + "-" + target + "." + o.format;
        if (PathExists(path)) throw Error(ErrorKind::kBadInput, "restore target " + path + " already exists");
        node.put("<xmlattr>.type", "file");
        node.erase("source");
        node.put("source.<xmlattr>.file", path);
        node.erase("backingStore");
        node.put("driver.<xmlattr>.name", "qemu");
        node.put("driver.<xmlattr>.type", o.format);
        restores.push_back({target, path, format});
      }
      ++it;
    }
    if (const ConfigFileRecord* nvram = m.FindConfig("uefi-nvram")) {
      std::string path = dir + "/" + name + "_VARS.fd";
      WriteFileAtomically(path, ReadPointFile(repo, o.point_id, *nvram));
      created.push_back(path);
      dom.put("os.nvram", path);
    } else if (dom.get_child_optional("os.nvram")) {
      dom.get_child("os").erase("nvram");  // libvirt starts one from its template
    }
  } else {
    name = original;
    VirPtr<virDomain> existing(virDomainLookupByName(conn.get(), original.c_str()));
    if (!existing) {
      virResetLastError();
      throw Error(ErrorKind::kNotFound, "--overwrite: domain '" + original + "' does not exist at " + o.uri);
    }
    int state = 0;
    virDomainGetState(existing.get(), &state, nullptr, 0);
    if (state != VIR_DOMAIN_SHUTOFF) {
      LogWarning("powering off domain " + original + " to restore over it");
      if (virDomainDestroy(existing.get()) != 0) ThrowLibvirt("powering off domain " + original);
    }
    for (auto& [tag, node] : dom.get_child("devices")) {
      if (tag != "disk" || node.get<std::string>("<xmlattr>.device", "disk") != "disk") continue;
      std::string target = node.get<std::string>("target.<xmlattr>.dev", "");
      std::string path = node.get<std::string>("source.<xmlattr>.file", "");
      if (!m.FindDisk(target) || path.empty()) continue;
      // Over the original, each image keeps the format the domain expects.
      std::string type = node.get<std::string>("driver.<xmlattr>.type", "raw");
      restores.push_back({target, path, type == "qcow2" ? ImageFormat::kQcow2 : ImageFormat::kRaw});
    }
  }

  try {
    for (const auto& r : restores) {
      // Over the original: build beside it, then replace it in one rename.
      std::string target = o.overwrite ? r.path + temp_suffix : r.path;
      RestoreDisk(repo, o.point_id, r.disk, target, r.format, disk_options, o.progress);
      created.push_back(target);
      LogInfo("restored disk " + r.disk + " to " + r.path);
    }
    if (o.overwrite) {
      for (const auto& r : restores) {
        std::string temp = r.path + temp_suffix;
        if (::rename(temp.c_str(), r.path.c_str()) != 0) throw ErrnoError("replacing " + r.path, errno);
      }
      if (const ConfigFileRecord* nvram = m.FindConfig("uefi-nvram")) {
        WriteFileAtomically(nvram->origin, ReadPointFile(repo, o.point_id, *nvram));
      }
      created.clear();
    }
    VirPtr<virDomain> defined(virDomainDefineXML(conn.get(), WriteXml(tree).c_str()));
    if (!defined) ThrowLibvirt("defining domain " + name);
    if (!o.pool.empty()) RefreshPool(conn.get(), o.pool);
  } catch (...) {
    for (const auto& f : created) ::unlink(f.c_str());
    throw;
  }
  return name;
}

void RestoreDiskIntoLibvirtVm(Repository& repo, const std::string& uri, const std::string& vm,
                              const std::string& point_id, const std::string& disk,
                              const std::string& target_disk, const std::atomic<bool>* cancel,
                              DiskRestoreProgress* progress, const RepositoryKey* key) {
  auto conn = Connect(uri);
  auto dom = LookupDomain(conn.get(), vm);
  int state = 0;
  if (virDomainGetState(dom.get(), &state, nullptr, 0) != 0) ThrowLibvirt("state of domain " + vm);
  if (state != VIR_DOMAIN_SHUTOFF) {
    throw Error(ErrorKind::kBadInput, "domain " + vm + " is " + DomainStateName(state) +
                                          "; shut it off before restoring a disk into it");
  }
  pt::ptree tree = ParseXml(DomainXmlDesc(dom.get(), VIR_DOMAIN_XML_INACTIVE), "domain XML");
  std::string path, format;
  std::vector<std::string> targets;
  for (const auto& [tag, node] : tree.get_child("domain.devices")) {
    if (tag != "disk" || node.get<std::string>("<xmlattr>.device", "disk") != "disk") continue;
    std::string target = node.get<std::string>("target.<xmlattr>.dev", "");
    targets.push_back(target);
    if (target != target_disk) continue;
    path = node.get<std::string>("source.<xmlattr>.file", "");
    format = node.get<std::string>("driver.<xmlattr>.type", "raw");
  }
  if (path.empty()) {
    std::string list;
    for (const auto& t : targets) list += (list.empty() ? "" : ", ") + t;
    throw Error(ErrorKind::kNotFound, "domain " + vm + " has no file-backed disk '" + target_disk + "' (its disks: " +
                                          list + ")");
  }
  ImageFormat image_format = ParseImageFormat(format == "qcow2" ? "qcow2" : "raw");
  static std::atomic<uint64_t> calls{0};
  std::string temp = path + ".ferry-restore-" + std::to_string(::getpid()) + "-" + std::to_string(++calls);
  DiskRestoreOptions options;
  options.cancel = cancel;
  options.key = key;
  RestoreDisk(repo, point_id, disk, temp, image_format, options, progress);
  // Keep the image's owner and mode: libvirt's DAC labels come from them.
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (::chown(temp.c_str(), st.st_uid, st.st_gid) != 0 || ::chmod(temp.c_str(), st.st_mode & 07777) != 0) {
      int err = errno;
      ::unlink(temp.c_str());
      throw ErrnoError("copying the owner and mode of " + path, err);
    }
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw ErrnoError("replacing " + path, err);
  }
  FsyncDirectory(std::filesystem::path(path).parent_path().string());
  LogInfo("restored disk " + disk + " of point " + point_id + " into " + target_disk + " of domain " + vm + " (" +
          path + ")");
}

}  // namespace ferry::worker
