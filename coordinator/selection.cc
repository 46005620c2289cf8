#include "ferry/coordinator/selection.h"

namespace json = boost::json;

namespace ferry::coordinator {

bool SelectedVm::HasDisksToBackUp() const {
  for (const SelectedDisk& d : disks)
    if (!d.excluded) return true;
  return false;
}

std::vector<SelectedVm> ResolveSelection(Database& db, const json::object& selection, const json::array& exclude_disks) {
  auto listed = [&](const char* key, const std::string& value) {
    auto it = selection.find(key);
    if (it == selection.end() || !it->value().is_array()) return false;
    for (const auto& v : it->value().as_array())
      if (v.is_string() && v.as_string() == value) return true;
    return false;
  };
  auto excluded = [&](const std::string& vm, const std::string& disk) {
    for (const auto& e : exclude_disks) {
      const json::object& o = e.as_object();
      bool vm_matches = !o.contains("vm") || o.at("vm").as_string() == vm;
      if (vm_matches && o.at("disk").as_string() == disk) return true;
    }
    return false;
  };
  std::vector<SelectedVm> out;
  // One pass over VMs and their disks, in VM order.
  Statement all = db.Prepare(
      "SELECT v.id, v.name, v.tags, h.id, h.name, h.cluster, d.name, d.size_bytes FROM vms v "
      "JOIN hosts h ON h.id = v.host_id LEFT JOIN disks d ON d.vm_id = v.id "
      "WHERE v.state != 'missing' ORDER BY v.id, d.name");
  int64_t current = 0;
  bool chosen = false;
  while (all.Step()) {
    if (all.Int(0) != current) {
      current = all.Int(0);
      bool tagged = false;
      json::value tags = json::parse(all.Text(2));
      for (const auto& tag : tags.as_array()) tagged = tagged || listed("tags", std::string(tag.as_string()));
      chosen = listed("vms", all.Text(1)) || tagged || listed("hosts", all.Text(4)) ||
               (!all.Text(5).empty() && listed("clusters", all.Text(5)));
      if (chosen) {
        out.push_back({all.Int(0), all.Int(3), all.Text(1), all.Text(4), all.Text(5), {}, {}});
        for (const auto& tag : tags.as_array()) out.back().tags.emplace_back(tag.as_string());
      }
    }
    if (chosen && !all.IsNull(6))
      out.back().disks.push_back({all.Text(6), all.Int(7), excluded(all.Text(1), all.Text(6))});
  }
  return out;
}

}  // namespace ferry::coordinator
