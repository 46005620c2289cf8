// Garbage collection and space accounting (gc.h; design and safety argument
// in docs/gc.md). Layout of what the GC keeps in the repository:
//
//   <repo>/gc.lock         flock, held for the whole GC; holds the holder's pid
//   <repo>/gc/state.json   the saved sweep (format below), written atomically
//   <repo>/gc/marked       the sorted marked digests (format below)
//   chunks/<3 hex>/.gc-<64 hex>  a chunk between the two steps of its removal
#include "ferry/common/gc.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "ferry/common/checksum.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/format.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"

namespace json = boost::json;

namespace ferry {

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The clock the kernel stamps files with (the coarse one): a file touched
// after this reading never carries an earlier time than it.
int64_t NowNs() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string Rfc3339(int64_t unix_ns) {
  time_t s = static_cast<time_t>(unix_ns / 1000000000);
  std::tm tm;
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// "2026-11-22T03:42:10Z" (fractions and offsets are not written by Ferry).
std::optional<int64_t> ParseRfc3339Ns(const std::string& text) {
  std::tm tm{};
  int consumed = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                  &tm.tm_min, &tm.tm_sec, &consumed) != 6) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(::timegm(&tm)) * 1000000000;
}

// Hex digit values (chunk names are lowercase); 0xff for anything else.
struct HexTable {
  uint8_t value[256];
  constexpr HexTable() : value() {
    for (int c = 0; c < 256; ++c) value[c] = 0xff;
    for (int c = '0'; c <= '9'; ++c) value[c] = static_cast<uint8_t>(c - '0');
    for (int c = 'a'; c <= 'f'; ++c) value[c] = static_cast<uint8_t>(c - 'a' + 10);
  }
};
constexpr HexTable kHex;

// A chunk file's name as a digest; false for anything else.
bool ParseChunkName(const char* name, size_t length, Digest* out) {
  if (length != 64) return false;
  uint8_t bad = 0;
  for (size_t i = 0; i < 32; ++i) {
    uint8_t hi = kHex.value[static_cast<uint8_t>(name[2 * i])], lo = kHex.value[static_cast<uint8_t>(name[2 * i + 1])];
    bad |= (hi | lo) & 0xf0;
    out->bytes[i] = static_cast<uint8_t>(hi << 4 | (lo & 0xf));
  }
  return bad == 0;
}

// Inline forms of the digest's zero test and equality, for the marking loop.
inline bool IsZeroDigest(const Digest& d) {
  uint64_t w[4];
  std::memcpy(w, d.bytes.data(), 32);
  return (w[0] | w[1] | w[2] | w[3]) == 0;
}
inline bool SameDigest(const Digest& a, const Digest& b) {
  uint64_t x[4], y[4];
  std::memcpy(x, a.bytes.data(), 32);
  std::memcpy(y, b.bytes.data(), 32);
  return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

unsigned DirectoryOf(const Digest& d) { return static_cast<unsigned>(d.bytes[0]) << 4 | d.bytes[1] >> 4; }

std::string DirectoryName(unsigned directory) {
  char buf[4];
  std::snprintf(buf, sizeof buf, "%03x", directory);
  return buf;
}

bool DigestLess(const Digest& a, const Digest& b) { return std::memcmp(a.bytes.data(), b.bytes.data(), 32) < 0; }

// The marked digests while marking: open addressing over a power-of-two
// table (SHA-256 is uniform, so its first 8 bytes are the hash), the zero
// digest meaning "empty" (a zero marker is never marked).
//
// For space accounting it also tracks, per digest, the only point and the
// only chain referencing it (or kShared), and lists each chain's distinct
// digests. A point's digests are inserted one after another, and a chain's
// points one after another (Mark orders them so), so an entry that remembers
// the last point and the last chain that referenced it tells when one
// references it for the first time. Tracking data lives in `entries_`,
// numbered in order of first reference (a slot holds its entry's number), so
// it does not move when the table grows: 4 bytes per slot, 16 per digest,
// 4 per (chain, distinct digest).
class DigestTable {
 public:
  static constexpr uint32_t kShared = 0xffffffff;

  struct Entry {
    uint32_t point, last_point;  // the only point referencing it (kShared), the last one that did
    uint32_t chain, last_chain;  // the same for chains
  };

  explicit DigestTable(bool track) : track_(track) { Resize(1 << 16); }

  size_t size() const { return count_; }

  // Marks `d` as referenced by point `point` of chain `chain` (tracked only if asked).
  void Insert(const Digest& d, uint32_t point, uint32_t chain) {
    if ((count_ + 1) * 10 > slots_.size() * 7) Resize(slots_.size() * 2);
    size_t i = Slot(d);
    if (IsZeroDigest(slots_[i])) {
      slots_[i] = d;
      ++count_;
      if (track_) {
        if (entries_.size() >= kShared) throw Error(ErrorKind::kInternal, "space accounting: too many chunks");
        const auto n = static_cast<uint32_t>(entries_.size());
        number_[i] = n;
        entries_.push_back({point, point, chain, chain});
        ++distinct_per_point_[point];
        chain_digests_[chain].push_back(n);
      }
      return;
    }
    if (!track_) return;
    Entry& e = entries_[number_[i]];
    if (e.last_point != point) {
      e.point = kShared;
      e.last_point = point;
      ++distinct_per_point_[point];
    }
    if (e.last_chain != chain) {
      e.chain = kShared;
      e.last_chain = chain;
      chain_digests_[chain].push_back(number_[i]);
    }
  }
  bool Contains(const Digest& d) const { return !IsZeroDigest(slots_[Slot(d)]); }
  // The number of `d`'s entry (tracking only), or nullopt when unreferenced.
  std::optional<uint32_t> Find(const Digest& d) const {
    size_t i = Slot(d);
    if (IsZeroDigest(slots_[i])) return std::nullopt;
    return number_[i];
  }
  const Entry& entry(uint32_t n) const { return entries_[n]; }
  size_t entries() const { return entries_.size(); }
  // Distinct digests referenced per point (points numbered from 0).
  const std::vector<uint64_t>& distinct_per_point() const { return distinct_per_point_; }
  void AddPoint() { distinct_per_point_.push_back(0); }
  // The entry numbers of each chain's distinct digests (chains numbered from 0).
  const std::vector<std::vector<uint32_t>>& chain_digests() const { return chain_digests_; }
  void AddChain() { chain_digests_.emplace_back(); }

  std::vector<Digest> TakeSorted() {
    std::vector<Digest> out;
    out.reserve(count_);
    for (const auto& d : slots_) {
      if (!IsZeroDigest(d)) out.push_back(d);
    }
    std::vector<Digest>().swap(slots_);
    std::sort(out.begin(), out.end(), DigestLess);
    return out;
  }

 private:
  static uint64_t Hash(const Digest& d) {
    uint64_t h;
    std::memcpy(&h, d.bytes.data() + 8, sizeof h);  // bytes 0-1 pick the directory; use others
    return h;
  }
  size_t Slot(const Digest& d) const {
    size_t mask = slots_.size() - 1;
    for (size_t i = Hash(d) & mask;; i = (i + 1) & mask) {
      if (IsZeroDigest(slots_[i]) || SameDigest(slots_[i], d)) return i;
    }
  }
  void Resize(size_t capacity) {
    std::vector<Digest> old = std::move(slots_);
    std::vector<uint32_t> old_number = std::move(number_);
    slots_.assign(capacity, Digest{});
    if (track_) number_.assign(capacity, 0);
    for (size_t j = 0; j < old.size(); ++j) {
      if (IsZeroDigest(old[j])) continue;
      size_t i = Slot(old[j]);
      slots_[i] = old[j];
      if (track_) number_[i] = old_number[j];
    }
  }

  bool track_;
  std::vector<Digest> slots_;
  std::vector<uint32_t> number_;  // per slot: its entry
  std::vector<Entry> entries_;
  std::vector<uint64_t> distinct_per_point_;
  std::vector<std::vector<uint32_t>> chain_digests_;
  size_t count_ = 0;
};

struct MarkResult {
  explicit MarkResult(bool track_points) : table(track_points) {}
  DigestTable table;
  uint64_t points = 0, staged_points = 0, indexes = 0, unchecked_indexes = 0;
  int64_t oldest_staged_ns = INT64_MAX;  // when the oldest staged point began
  std::vector<PointSpace> points_space;  // in listing order (oldest first)
  std::vector<uint32_t> point_numbers;  // parallel to points_space: its number in the table
  static constexpr uint32_t kStagedOwner = 0;  // the number of the pseudo-point (and chain) "staging"
  uint32_t numbers = 1;                          // numbers in use: staging and the points listed
  std::vector<std::string> chain_names;          // by chain number: staging (""), then the chains by name
  std::vector<std::string> problems;
};

void CheckCancel(const std::atomic<bool>* cancel) {
  if (cancel && cancel->load()) throw Error(ErrorKind::kInterrupted, "garbage collection interrupted");
}

// Marks every digest of `bytes` (an index file) from `offset` on.
void MarkDigests(std::span<const uint8_t> bytes, DigestTable& table, uint32_t point, uint32_t chain) {
  Digest d;
  for (size_t off = kFixedIndexHeaderSize; off + 32 <= bytes.size(); off += 32) {
    std::memcpy(d.bytes.data(), bytes.data() + off, 32);
    if (!IsZeroDigest(d)) table.Insert(d, point, chain);
  }
}

// Marks the digests of one index. An index that fails its checks is read
// anyway, every 32 bytes after the header taken as a digest: marking too
// much keeps chunks, marking too little would remove them. Returns false
// when it had to (the caller reports the point).
bool MarkIndex(const std::string& path, const Digest* expected_sha256, DigestTable& table, uint32_t point,
               uint32_t chain, std::string* problem) {
  try {
    FixedIndexReader index(path, expected_sha256);
    MarkDigests(index.bytes(), table, point, chain);
    return true;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kCorrupt) throw;  // unreadable, or a newer format: no GC can go on
    *problem = e.what();
  }
  std::string raw = ReadWholeFile(path);
  MarkDigests({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()}, table, point, chain);
  return false;
}

std::optional<int64_t> EntryMtimeNs(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return std::nullopt;
  return MtimeNs(st);
}

// Staging: when each staged point began (the earliest of its header's
// started_at and its files' times: a caller-given started_at is not trusted
// to be early enough), and the digests of every index in it, finished or not.
void MarkStaging(const std::string& repo_dir, MarkResult& r, uint32_t staged_owner) {
  const std::string staging = repo_dir + "/staging";
  if (!PathExists(staging)) return;
  std::set<std::string> ids;
  for (const auto& name : ListDirectory(staging)) {
    std::string id = name;
    if (id.ends_with(".lock"))
      id.resize(id.size() - 5);
    else if (id.ends_with(".stage"))
      id.resize(id.size() - 6);
    ids.insert(id);
  }
  for (const auto& id : ids) {
    const std::string base = staging + "/" + id;
    std::optional<int64_t> began;
    for (const std::string& p : {base + ".lock", base + ".stage", base, base + ".stage/point.json"}) {
      if (auto t = EntryMtimeNs(p)) began = began ? std::min(*began, *t) : *t;
    }
    try {
      std::string header = ReadWholeFile(base + ".stage/point.json");
      json::error_code ec;
      json::value v = json::parse(header, ec);
      if (!ec && v.is_object() && v.as_object().contains("started_at") && v.at("started_at").is_string()) {
        if (auto t = ParseRfc3339Ns(std::string(v.at("started_at").as_string()))) {
          began = began ? std::min(*began, *t) : *t;
        }
      }
    } catch (const Error&) {
      // no header (yet, or any more): the files' times stand
    }
    if (!began) continue;  // gone meanwhile (committed or discarded)
    ++r.staged_points;
    r.oldest_staged_ns = std::min(r.oldest_staged_ns, *began);
    std::vector<std::string> files;
    try {
      files = ListDirectory(base);
    } catch (const Error&) {
      continue;  // committed or discarded meanwhile: its chunks are safe by the window (docs/gc.md)
    }
    for (const auto& f : files) {
      if (!f.ends_with(".fidx")) continue;
      try {
        // Read, not mapped: a disk written again truncates its index, which
        // would fault a mapping. Entries not yet set read as zero markers.
        std::string bytes = ReadWholeFile(base + "/" + f);
        MarkDigests({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, r.table, staged_owner,
                    staged_owner);
        ++r.indexes;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kNotFound) throw;
      }
    }
  }
}

// Marks staging, then the committed points, listed only after staging has
// been read: a point committed meanwhile is seen in one of them (the commit
// renames it from one to the other). Listing points/ first would miss a
// point committed between the two listings. Every manifest is loaded before
// any index is read, so that the points are marked chain by chain (what the
// table needs to tell a chain's distinct digests); a point removed in
// between has its indexes not found, which is noted.
MarkResult Mark(const std::string& repo_dir, Repository& repo, bool track_points, const std::atomic<bool>* cancel,
                GcProgress* progress, const std::function<void()>& between_listings = {}) {
  MarkResult r(track_points);
  r.table.AddPoint();  // number 0: staging
  r.table.AddChain();
  r.chain_names.emplace_back();
  MarkStaging(repo_dir, r, MarkResult::kStagedOwner);
  if (between_listings) between_listings();
  std::vector<std::string> ids = repo.points().List();
  if (progress) progress->points_total = ids.size();
  r.numbers = static_cast<uint32_t>(ids.size()) + 1;
  for (size_t i = 0; i < ids.size(); ++i) r.table.AddPoint();

  struct Listed {
    std::optional<RestorePointManifest> manifest;  // nullopt: unreadable, its indexes read without a check
    bool removed = false;                          // removed meanwhile
    uint32_t chain = 0;
  };
  std::vector<Listed> listed(ids.size());
  std::map<std::string, uint32_t> chains;
  for (size_t i = 0; i < ids.size(); ++i) {
    CheckCancel(cancel);
    const std::string& id = ids[i];
    const std::string dir = repo_dir + "/points/" + id;
    try {
      listed[i].manifest = repo.points().Load(id);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kBadInput) throw e.WithContext("garbage collection cannot read point " + id);
      if (e.kind() == ErrorKind::kNotFound && !PathExists(dir)) {
        listed[i].removed = true;
        continue;
      }
      r.problems.push_back("point " + id + ": " + e.what() + "; every index file in " + dir + " read without a check");
    }
    chains.emplace(listed[i].manifest ? listed[i].manifest->chain : "", 0);
  }
  for (auto& [name, number] : chains) {
    number = static_cast<uint32_t>(r.chain_names.size());
    r.chain_names.push_back(name);
    r.table.AddChain();
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (listed[i].removed) continue;
    listed[i].chain = chains.at(listed[i].manifest ? listed[i].manifest->chain : "");
    order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return listed[a].chain < listed[b].chain; });

  std::vector<std::optional<PointSpace>> spaces(ids.size());
  for (size_t i : order) {
    CheckCancel(cancel);
    const std::string& id = ids[i];
    const std::string dir = repo_dir + "/points/" + id;
    const uint32_t owner = static_cast<uint32_t>(i) + 1;
    const uint32_t chain = listed[i].chain;
    PointSpace space;
    space.id = id;
    ++r.points;
    if (const auto& m = listed[i].manifest) {
      space.vm = m->vm.name;
      space.chain = m->chain;
      for (const auto& d : m->disks) {
        space.logical_bytes += d.size;
        std::string problem;
        try {
          if (!MarkIndex(dir + "/" + d.index_file, &d.index_sha256, r.table, owner, chain, &problem)) {
            ++r.unchecked_indexes;
            r.problems.push_back("point " + id + " disk " + d.name + ": " + problem + "; read without a check");
          }
          ++r.indexes;
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kNotFound) throw e.WithContext("point " + id);
          r.problems.push_back("point " + id + " disk " + d.name + ": " + e.what());
        }
      }
    } else {
      std::vector<std::string> files;
      try {
        files = ListDirectory(dir);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kNotFound) throw;
        --r.points;  // removed meanwhile
        continue;
      }
      for (const auto& f : files) {
        if (!f.ends_with(".fidx")) continue;
        std::string problem;
        MarkIndex(dir + "/" + f, nullptr, r.table, owner, chain, &problem);
        ++r.indexes;
        ++r.unchecked_indexes;
      }
    }
    space.chunks = track_points ? r.table.distinct_per_point()[owner] : 0;
    spaces[i] = std::move(space);
    if (progress) ++progress->points_read;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!spaces[i]) continue;
    r.points_space.push_back(std::move(*spaces[i]));
    r.point_numbers.push_back(static_cast<uint32_t>(i) + 1);
  }
  for (const auto& p : r.problems) LogWarning(p);
  return r;
}

// The names in one chunk directory (read once, before anything in it is
// renamed, so no entry is met twice), in inode order: what is stat'ed then
// reads the inode table in order, which matters when it is not cached. An
// absent directory is empty.
std::vector<std::string> ReadChunkDirectory(int chunks_fd, const std::string& name, const std::string& path,
                                            UniqueFd* dir_fd) {
  std::vector<std::string> names;
  std::vector<std::pair<ino_t, std::string>> entries;
  int fd = ::openat(chunks_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return names;
    throw ErrnoError("opening chunk directory " + path, errno);
  }
  *dir_fd = UniqueFd(fd);
  int dup_fd = ::dup(fd);
  if (dup_fd < 0) throw ErrnoError("reading chunk directory " + path, errno);
  DIR* d = ::fdopendir(dup_fd);
  if (!d) {
    ::close(dup_fd);
    throw ErrnoError("reading chunk directory " + path, errno);
  }
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0))) continue;
    entries.emplace_back(e->d_ino, e->d_name);
  }
  int err = errno;
  ::closedir(d);
  if (err) throw ErrnoError("reading chunk directory " + path, err);
  std::sort(entries.begin(), entries.end());
  names.reserve(entries.size());
  for (auto& e : entries) names.push_back(std::move(e.second));
  return names;
}

// quarantine/: counted, never touched.
void CountQuarantine(const std::string& repo_dir, uint64_t* files, uint64_t* bytes) {
  const std::string q = repo_dir + "/quarantine";
  if (!PathExists(q)) return;
  for (const auto& name : ListDirectory(q)) {
    struct stat st;
    if (::lstat((q + "/" + name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      ++*files;
      *bytes += static_cast<uint64_t>(st.st_size);
    }
  }
}

// ---- The saved GC: gc/marked and gc/state.json -------------------------

constexpr char kMarkedFamily[] = "FRYGCM";  // FRYGCM01: 64-byte header (magic, count), 32 bytes per digest
constexpr char kStateFamily[] = "ferry-gc-state";

std::string MarkedFileBytes(const std::vector<Digest>& marked) {
  std::string out(kFixedIndexHeaderSize + 32 * marked.size(), '\0');
  std::string magic = Magic(kMarkedFamily, 1);
  std::memcpy(out.data(), magic.data(), 8);
  uint64_t n = marked.size();
  for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<char>(n >> (8 * i));
  for (size_t i = 0; i < marked.size(); ++i)
    std::memcpy(out.data() + kFixedIndexHeaderSize + 32 * i, marked[i].bytes.data(), 32);
  return out;
}

std::vector<Digest> MarkedFromBytes(const std::string& bytes, const std::string& path) {
  if (bytes.size() < kFixedIndexHeaderSize) throw Error(ErrorKind::kCorrupt, path + ": truncated");
  CheckMagic(reinterpret_cast<const unsigned char*>(bytes.data()), kMarkedFamily, 1, path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
  if (bytes.size() != kFixedIndexHeaderSize + 32 * n)
    throw Error(ErrorKind::kCorrupt, path + ": size does not match its count");
  std::vector<Digest> out(n);
  for (uint64_t i = 0; i < n; ++i) std::memcpy(out[i].bytes.data(), bytes.data() + kFixedIndexHeaderSize + 32 * i, 32);
  if (!std::is_sorted(out.begin(), out.end(), DigestLess)) throw Error(ErrorKind::kCorrupt, path + ": not sorted");
  return out;
}

struct SavedGc {
  std::string repository_id;
  int64_t started_at = 0;  // Unix seconds
  int64_t window_s = 0;
  unsigned next_directory = 0;
  uint64_t marked_count = 0;
  Digest marked_sha256;
  GcReport counters;  // so far
};

// The state file: one JSON object on a line, then a line with the SHA-256
// (64 lowercase hex) of the first line's bytes, newline included.
std::string StateFileBytes(const SavedGc& s) {
  const GcReport& c = s.counters;
  json::object o{{"format", std::string(kStateFamily) + "-v1"},
                 {"repository_id", s.repository_id},
                 {"started_at", s.started_at},
                 {"cutoff_ns", c.cutoff_ns},
                 {"window_s", s.window_s},
                 {"phase", "sweep"},
                 {"next_directory", s.next_directory},
                 {"marked_count", s.marked_count},
                 {"marked_sha256", s.marked_sha256.Hex()},
                 {"points", c.points},
                 {"staged_points", c.staged_points},
                 {"indexes", c.indexes},
                 {"unchecked_indexes", c.unchecked_indexes},
                 {"chunks_seen", c.chunks_seen},
                 {"chunks_removed", c.chunks_removed},
                 {"bytes_removed", c.bytes_removed},
                 {"chunks_kept_by_window", c.chunks_kept_by_window},
                 {"bytes_kept_by_window", c.bytes_kept_by_window},
                 {"chunks_rescued", c.chunks_rescued},
                 {"temp_files_removed", c.temp_files_removed},
                 {"mark_seconds", c.mark_seconds},
                 {"sweep_seconds", c.sweep_seconds}};
  std::string line = json::serialize(o) + "\n";
  return line + Sha256(line.data(), line.size()).Hex() + "\n";
}

SavedGc StateFromBytes(const std::string& bytes, const std::string& path) {
  const std::string what = "GC state " + path;
  size_t split = bytes.size() >= 66 ? bytes.size() - 65 : std::string::npos;
  if (split == std::string::npos || bytes.back() != '\n' || bytes[split - 1] != '\n') {
    throw Error(ErrorKind::kCorrupt, what + ": no checksum line");
  }
  std::string line = bytes.substr(0, split);
  if (Sha256(line.data(), line.size()).Hex() != bytes.substr(split, 64)) {
    throw Error(ErrorKind::kCorrupt, what + ": checksum does not match");
  }
  json::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail(what));
  CheckFormatName(*r.String("format", true), kStateFamily, 1, what);
  SavedGc s;
  GcReport& c = s.counters;
  s.repository_id = *r.String("repository_id", true);
  s.started_at = *r.Int("started_at", true, 0, INT64_MAX);
  c.cutoff_ns = *r.Int("cutoff_ns", true, INT64_MIN, INT64_MAX);
  s.window_s = *r.Int("window_s", true, 0, INT64_MAX);
  if (*r.String("phase", true) != "sweep") throw Error(ErrorKind::kCorrupt, what + ": unknown phase");
  s.next_directory = static_cast<unsigned>(*r.Int("next_directory", true, 0, kChunkDirectories));
  s.marked_count = static_cast<uint64_t>(*r.Int("marked_count", true, 0, INT64_MAX));
  s.marked_sha256 = Digest::FromHex(*r.String("marked_sha256", true));
  auto u = [&](const char* name) { return static_cast<uint64_t>(*r.Int(name, true, 0, INT64_MAX)); };
  c.points = u("points");
  c.staged_points = u("staged_points");
  c.indexes = u("indexes");
  c.unchecked_indexes = u("unchecked_indexes");
  c.chunks_seen = u("chunks_seen");
  c.chunks_removed = u("chunks_removed");
  c.bytes_removed = u("bytes_removed");
  c.chunks_kept_by_window = u("chunks_kept_by_window");
  c.bytes_kept_by_window = u("bytes_kept_by_window");
  c.chunks_rescued = u("chunks_rescued");
  c.temp_files_removed = u("temp_files_removed");
  c.mark_seconds = v.at("mark_seconds").to_number<double>();
  c.sweep_seconds = v.at("sweep_seconds").to_number<double>();
  return s;
}

// One GC at a time: flock on gc.lock, which holds the holder's pid.
class GcLock {
 public:
  GcLock(const std::string& repo_dir, bool dry_run) {
    const std::string path = repo_dir + "/gc.lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      // A dry run changes nothing and may run where it cannot write.
      if (dry_run && (errno == EACCES || errno == EROFS)) return;
      throw ErrnoError("creating the GC lock " + path, errno);
    }
    fd_ = UniqueFd(fd);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK) throw ErrnoError("locking " + path, errno);
      char buf[32] = {};
      ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      throw Error(ErrorKind::kRetryable, "a GC is running on repository " + repo_dir + " (pid " +
                                             (pid.empty() ? "unknown" : pid) + "); only one runs at a time");
    }
    std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      LogWarning("cannot record this GC's pid in " + path + ": " + std::strerror(errno));
    }
  }

  // The pid goes with the lock (a killed GC's stays, naming a dead process).
  ~GcLock() {
    if (fd_.valid() && ::ftruncate(fd_.get(), 0) != 0) LogDebug("cannot clear the GC lock's pid");
  }

 private:
  UniqueFd fd_;
};

// The sweep of one chunk directory against the sorted mark.
class Sweeper {
 public:
  Sweeper(int chunks_fd, std::string chunks_dir, const std::vector<Digest>& marked, int64_t cutoff_ns, bool dry_run,
          const std::function<void(const std::string&)>& before_removal, GcReport& report)
      : before_removal_(before_removal),
        chunks_fd_(chunks_fd),
        chunks_dir_(std::move(chunks_dir)),
        marked_(marked),
        cutoff_ns_(cutoff_ns),
        dry_run_(dry_run),
        r_(report) {}

  void Sweep(unsigned directory) {
    const std::string name = DirectoryName(directory);
    const std::string path = chunks_dir_ + "/" + name;
    UniqueFd fd;
    std::vector<std::string> names = ReadChunkDirectory(chunks_fd_, name, path, &fd);
    if (names.empty()) return;
    // The marked digests of this directory: a contiguous run of the sorted mark.
    Digest low;
    low.bytes[0] = static_cast<uint8_t>(directory >> 4);
    low.bytes[1] = static_cast<uint8_t>((directory & 0xf) << 4);
    auto begin = std::lower_bound(marked_.begin(), marked_.end(), low, DigestLess);
    auto end = begin;
    while (end != marked_.end() && DirectoryOf(*end) == directory) ++end;
    auto is_marked = [&](const Digest& d) { return std::binary_search(begin, end, d, DigestLess); };

    for (const auto& entry : names) {
      Digest d;
      if (ParseChunkName(entry.c_str(), entry.size(), &d)) {
        if (DirectoryOf(d) != directory) continue;  // not a chunk of this directory: left alone
        ++r_.chunks_seen;
        if (is_marked(d)) continue;
        SweepCandidate(fd.get(), path, entry);
      } else if (entry.starts_with(".gc-") && ParseChunkName(entry.c_str() + 4, entry.size() - 4, &d) &&
                 DirectoryOf(d) == directory) {
        FinishKilledRemoval(fd.get(), path, entry.substr(4), is_marked(d));
      } else if (entry[0] == '.' && entry.find(".tmp-") != std::string::npos) {
        RemoveStaleTemp(fd.get(), path, entry);
      }
    }
  }

 private:
  std::optional<struct stat> Stat(int fd, const std::string& name, const std::string& path) {
    struct stat st;
    if (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return std::nullopt;  // quarantined or rescued meanwhile
      throw ErrnoError("stat of " + path + "/" + name, errno);
    }
    if (!S_ISREG(st.st_mode)) return std::nullopt;
    return st;
  }

  void KeptByWindow(const struct stat& st) {
    ++r_.chunks_kept_by_window;
    r_.bytes_kept_by_window += static_cast<uint64_t>(st.st_size);
  }

  void Removed(const struct stat& st) {
    ++r_.chunks_removed;
    r_.bytes_removed += static_cast<uint64_t>(st.st_size);
  }

  // An unmarked chunk: removed if older than the cutoff, in two steps: the
  // rename makes it missing to everyone (who then rescues it: chunk_store.cc),
  // and the second look at its mtime catches a touch that came between the
  // first look and the rename.
  void SweepCandidate(int fd, const std::string& path, const std::string& name) {
    auto st = Stat(fd, name, path);
    if (!st) return;
    if (MtimeNs(*st) >= cutoff_ns_) return KeptByWindow(*st);
    if (dry_run_) return Removed(*st);
    if (before_removal_) before_removal_(name);
    const std::string doomed = ".gc-" + name;
    if (::renameat(fd, name.c_str(), fd, doomed.c_str()) != 0) {
      if (errno == ENOENT) return;
      throw ErrnoError("renaming chunk " + path + "/" + name + " to " + doomed, errno);
    }
    auto again = Stat(fd, doomed, path);
    if (!again) return;  // rescued and gone again: nothing of ours left
    if (MtimeNs(*again) >= cutoff_ns_) {
      Restore(fd, path, name);
      return KeptByWindow(*again);
    }
    Unlink(fd, path, doomed);
    Removed(*again);
  }

  // A doomed name left by a killed GC: removed, or put back when this GC
  // must keep the chunk.
  void FinishKilledRemoval(int fd, const std::string& path, const std::string& name, bool marked) {
    auto st = Stat(fd, ".gc-" + name, path);
    if (!st) return;
    ++r_.chunks_seen;
    if (marked || MtimeNs(*st) >= cutoff_ns_) {
      if (!dry_run_) Restore(fd, path, name);
      ++r_.chunks_rescued;
      return;
    }
    if (!dry_run_) Unlink(fd, path, ".gc-" + name);
    Removed(*st);
  }

  // A temp file of Insert's fallback path (no O_TMPFILE), left by a killed writer.
  void RemoveStaleTemp(int fd, const std::string& path, const std::string& name) {
    auto st = Stat(fd, name, path);
    if (!st || MtimeNs(*st) >= cutoff_ns_ || dry_run_) return;
    Unlink(fd, path, name);
    ++r_.temp_files_removed;
  }

  void Restore(int fd, const std::string& path, const std::string& name) {
    const std::string doomed = ".gc-" + name;
    // link, never rename: a copy stored under the name meanwhile stays.
    if (::linkat(fd, doomed.c_str(), fd, name.c_str(), 0) != 0 && errno != EEXIST && errno != ENOENT) {
      throw ErrnoError("putting chunk " + path + "/" + name + " back", errno);
    }
    Unlink(fd, path, doomed);
  }

  void Unlink(int fd, const std::string& path, const std::string& name) {
    if (::unlinkat(fd, name.c_str(), 0) != 0 && errno != ENOENT) {
      throw ErrnoError("removing " + path + "/" + name, errno);
    }
  }

  const std::function<void(const std::string&)>& before_removal_;
  int chunks_fd_;
  std::string chunks_dir_;
  const std::vector<Digest>& marked_;
  int64_t cutoff_ns_;
  bool dry_run_;
  GcReport& r_;
};

UniqueFd OpenChunksDir(const std::string& chunks_dir) {
  UniqueFd fd(::open(chunks_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT)
      throw Error(ErrorKind::kCorrupt, "the repository's chunk directory " + chunks_dir + " is missing");
    throw ErrnoError("opening chunk directory " + chunks_dir, errno);
  }
  return fd;
}

// A saved GC of this repository to resume, if there is a usable one.
std::optional<std::pair<SavedGc, std::vector<Digest>>> LoadSavedGc(const std::string& gc_dir,
                                                                   const std::string& repository_id) {
  const std::string state_path = gc_dir + "/state.json";
  if (!PathExists(state_path)) return std::nullopt;
  try {
    SavedGc s = StateFromBytes(ReadWholeFile(state_path), state_path);
    if (s.repository_id != repository_id) {
      LogWarning("GC state " + state_path + " belongs to another repository; starting over");
      return std::nullopt;
    }
    int64_t age = static_cast<int64_t>(::time(nullptr)) - s.started_at;
    if (age > std::chrono::duration_cast<std::chrono::seconds>(kGcStateLifetime).count() || age < -86400) {
      LogInfo("the saved GC of " + Rfc3339(s.started_at * 1000000000) + " is too old to resume; starting over");
      return std::nullopt;
    }
    const std::string marked_path = gc_dir + "/marked";
    std::string bytes = ReadWholeFile(marked_path);
    if (Sha256(bytes.data(), bytes.size()) != s.marked_sha256) {
      throw Error(ErrorKind::kCorrupt, marked_path + " does not match the checksum in " + state_path);
    }
    std::vector<Digest> marked = MarkedFromBytes(bytes, marked_path);
    if (marked.size() != s.marked_count)
      throw Error(ErrorKind::kCorrupt, marked_path + ": count does not match the state");
    return std::make_pair(std::move(s), std::move(marked));
  } catch (const Error& e) {
    // Starting over is always safe (a new mark and a new cutoff).
    LogWarning("cannot resume the saved GC (" + std::string(e.what()) + "); starting over");
    return std::nullopt;
  }
}

}  // namespace

GcReport CollectGarbage(const std::string& repo_dir, const GcOptions& options, GcProgress* progress) {
  const auto start = Clock::now();
  auto repo = Repository::Open(repo_dir);
  if (!options.dry_run) repo->PrepareForWriting();
  GcLock lock(repo_dir, options.dry_run);
  // Expired staging would hold the cutoff back to its start: the point
  // store's own sweep removes it first (what every Stage does).
  if (!options.dry_run) {
    for (const auto& id : repo->points().RemoveExpired()) LogInfo("removed expired staging of point " + id);
  }
  const std::string gc_dir = repo_dir + "/gc";
  const std::string chunks_dir = repo_dir + "/chunks";
  UniqueFd chunks_fd = OpenChunksDir(chunks_dir);

  GcReport report;
  report.dry_run = options.dry_run;
  std::vector<Digest> marked;
  SavedGc saved;
  std::optional<std::pair<SavedGc, std::vector<Digest>>> resumed;
  if (!options.dry_run) resumed = LoadSavedGc(gc_dir, repo->config().id);
  if (resumed) {
    saved = std::move(resumed->first);
    marked = std::move(resumed->second);
    report = saved.counters;
    report.resumed = true;
    report.started_at = saved.started_at;
    if (saved.window_s != options.window.count()) {
      LogInfo("resuming with the saved GC's window of " + std::to_string(saved.window_s) + " s");
    }
    LogInfo("resuming the GC of " + Rfc3339(saved.started_at * 1000000000) + " at chunk directory " +
            DirectoryName(saved.next_directory) + " (cutoff " + Rfc3339(report.cutoff_ns) + ")");
  } else {
    // The start is taken before anything is read: a backup that stages after
    // it touches its chunks after it too.
    const int64_t started_ns = NowNs();
    if (progress) progress->phase = static_cast<int>(GcPhase::kMark);
    const auto mark_start = Clock::now();
    MarkResult m = Mark(repo_dir, *repo, /*track_points=*/false, options.cancel, progress, options.between_listings);
    report.points = m.points;
    report.staged_points = m.staged_points;
    report.indexes = m.indexes;
    report.unchecked_indexes = m.unchecked_indexes;
    marked = m.table.TakeSorted();
    report.started_at = started_ns / 1000000000;
    report.cutoff_ns =
        std::min(started_ns, m.oldest_staged_ns) - static_cast<int64_t>(options.window.count()) * 1000000000;
    report.mark_seconds = Since(mark_start);
    saved.repository_id = repo->config().id;
    saved.started_at = report.started_at;
    saved.window_s = options.window.count();
    LogInfo("gc: marked " + std::to_string(marked.size()) + " chunk(s) referenced by " + std::to_string(m.points) +
            " point(s) and " + std::to_string(m.staged_points) + " staged point(s) (" + std::to_string(m.indexes) +
            " index(es)) in " + std::to_string(static_cast<int64_t>(report.mark_seconds * 1000)) + " ms; cutoff " +
            Rfc3339(report.cutoff_ns));
    if (!options.dry_run) {
      MakeDirectory(gc_dir);
      // An old state (one not resumed) goes before its mark is replaced.
      if (::unlink((gc_dir + "/state.json").c_str()) != 0 && errno != ENOENT) {
        throw ErrnoError("removing the old GC state " + gc_dir + "/state.json", errno);
      }
      std::string bytes = MarkedFileBytes(marked);
      WriteFileAtomically(gc_dir + "/marked", bytes);
      saved.marked_count = marked.size();
      saved.marked_sha256 = Sha256(bytes.data(), bytes.size());
      saved.next_directory = 0;
      saved.counters = report;
      WriteFileAtomically(gc_dir + "/state.json", StateFileBytes(saved));
    }
  }
  report.chunks_referenced = marked.size();
  report.cutoff = Rfc3339(report.cutoff_ns);

  if (progress) {
    progress->phase = static_cast<int>(GcPhase::kSweep);
    progress->directories_done = saved.next_directory;
  }
  // The directories are swept by several threads: removing a file waits on
  // the file system (273 us an unlink on the ext4 with online discard where
  // this was measured), not on a core. Progress is saved as the first
  // directory not yet finished, so a resume redoes at most the directories
  // that were in flight (sweeping one twice is harmless).
  const auto sweep_start = Clock::now();
  const double sweep_before = report.sweep_seconds;
  std::mutex mu;
  std::vector<bool> finished(kChunkDirectories, false);
  unsigned first_unfinished = saved.next_directory;
  std::atomic<unsigned> next_dir{saved.next_directory};
  std::atomic<bool> stop{false};
  std::exception_ptr failure;
  auto last_save = Clock::now();
  auto save = [&] {  // with mu held
    saved.next_directory = first_unfinished;
    report.sweep_seconds = sweep_before + Since(sweep_start);
    saved.counters = report;
    WriteFileAtomically(gc_dir + "/state.json", StateFileBytes(saved));
    last_save = Clock::now();
  };
  auto worker = [&] {
    GcReport local;
    Sweeper sweeper(chunks_fd.get(), chunks_dir, marked, report.cutoff_ns, options.dry_run, options.before_removal,
                    local);
    try {
      for (unsigned dir; !stop && (dir = next_dir++) < kChunkDirectories;) {
        if (options.cancel && options.cancel->load()) break;
        sweeper.Sweep(dir);
        std::lock_guard lock(mu);
        report.chunks_seen += std::exchange(local.chunks_seen, 0);
        report.chunks_removed += std::exchange(local.chunks_removed, 0);
        report.bytes_removed += std::exchange(local.bytes_removed, 0);
        report.chunks_kept_by_window += std::exchange(local.chunks_kept_by_window, 0);
        report.bytes_kept_by_window += std::exchange(local.bytes_kept_by_window, 0);
        report.chunks_rescued += std::exchange(local.chunks_rescued, 0);
        report.temp_files_removed += std::exchange(local.temp_files_removed, 0);
        finished[dir] = true;
        while (first_unfinished < kChunkDirectories && finished[first_unfinished]) ++first_unfinished;
        if (progress) {
          progress->directories_done = progress->directories_done + 1;
          progress->chunks_removed = report.chunks_removed;
        }
        if (options.after_directory) options.after_directory(dir);
        if (!options.dry_run && Since(last_save) >= 1.0 && first_unfinished < kChunkDirectories) save();
      }
    } catch (...) {
      std::lock_guard lock(mu);
      if (!failure) failure = std::current_exception();
      stop = true;
    }
  };
  {
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < std::max(1u, options.threads); ++t) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
  }
  // A failure (or a test's simulated kill) leaves the last saved progress.
  if (failure) std::rethrow_exception(failure);
  if (first_unfinished < kChunkDirectories) {  // cancelled
    if (!options.dry_run) save();
    throw Error(ErrorKind::kInterrupted, "garbage collection interrupted; the next `ferry gc` resumes it");
  }
  report.sweep_seconds = sweep_before + Since(sweep_start);
  if (!options.dry_run) {
    // The state goes first: a kill between the two leaves a mark without a
    // state, which the next GC ignores and overwrites.
    if (::unlink((gc_dir + "/state.json").c_str()) != 0 && errno != ENOENT) {
      LogWarning("cannot remove " + gc_dir + "/state.json: " + std::strerror(errno));
    }
    ::unlink((gc_dir + "/marked").c_str());
  }
  CountQuarantine(repo_dir, &report.quarantined_chunks, &report.quarantined_bytes);
  if (progress) progress->phase = static_cast<int>(GcPhase::kDone);
  report.seconds = Since(start);
  return report;
}

SpaceReport MeasureSpace(const std::string& repo_dir, GcProgress* progress) {
  auto repo = Repository::Open(repo_dir);
  const std::string chunks_dir = repo_dir + "/chunks";
  UniqueFd chunks_fd = OpenChunksDir(chunks_dir);
  if (progress) progress->phase = static_cast<int>(GcPhase::kMark);
  MarkResult m = Mark(repo_dir, *repo, /*track_points=*/true, nullptr, progress);
  SpaceReport r;
  r.points = m.points;
  r.problems = m.problems;
  r.points_space = std::move(m.points_space);
  // The table numbers points as listed; points_space leaves out those removed meanwhile.
  std::vector<size_t> slot_of_number(m.numbers, SIZE_MAX);
  for (size_t j = 0; j < m.point_numbers.size(); ++j) slot_of_number[m.point_numbers[j]] = j;
  const uint32_t staged_owner = MarkResult::kStagedOwner;
  for (const auto& p : r.points_space) r.logical_bytes += p.logical_bytes;
  std::vector<ChainSpace> chains(m.chain_names.size());  // by chain number; 0 (staging) is not reported
  for (size_t c = 0; c < chains.size(); ++c) {
    chains[c].chain = m.chain_names[c];
    chains[c].chunks = m.table.chain_digests()[c].size();
  }
  {
    std::map<std::string, size_t> chain_number;
    for (size_t c = 1; c < chains.size(); ++c) chain_number[chains[c].chain] = c;
    for (const auto& p : r.points_space) {
      ChainSpace& c = chains[chain_number.at(p.chain)];
      ++c.points;
      c.logical_bytes += p.logical_bytes;
    }
  }
  // The stored size of each referenced chunk that has a file, by entry: for
  // the chains' distinct chunks, summed once the sizes are known.
  constexpr uint64_t kNoFile = UINT64_MAX;
  std::vector<uint64_t> size_of_entry(m.table.entries(), kNoFile);

  if (progress) progress->phase = static_cast<int>(GcPhase::kSweep);
  uint64_t found_referenced = 0;
  for (unsigned dir = 0; dir < kChunkDirectories; ++dir) {
    const std::string name = DirectoryName(dir);
    UniqueFd fd;
    for (const auto& entry : ReadChunkDirectory(chunks_fd.get(), name, chunks_dir + "/" + name, &fd)) {
      Digest d;
      if (!ParseChunkName(entry.c_str(), entry.size(), &d) || DirectoryOf(d) != dir) continue;
      struct stat st;
      if (::fstatat(fd.get(), entry.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
      const auto size = static_cast<uint64_t>(st.st_size);
      ++r.chunks;
      r.stored_bytes += size;
      std::optional<uint32_t> number = m.table.Find(d);
      if (!number) {
        ++r.garbage_chunks;
        r.garbage_bytes += size;
        continue;
      }
      size_of_entry[*number] = size;
      const DigestTable::Entry& owner = m.table.entry(*number);
      ++found_referenced;
      ++r.referenced_chunks;
      r.referenced_bytes += size;
      if (owner.point == staged_owner) {
        ++r.staged_only_chunks;
        r.staged_only_bytes += size;
      } else if (owner.point != DigestTable::kShared && owner.point < m.numbers &&
                 slot_of_number[owner.point] != SIZE_MAX) {
        PointSpace& p = r.points_space[slot_of_number[owner.point]];
        ++p.unique_chunks;
        p.unique_bytes += size;
      }
      if (owner.chain != DigestTable::kShared && owner.chain != staged_owner) {
        ++chains[owner.chain].unique_chunks;
        chains[owner.chain].unique_bytes += size;
      }
    }
    if (progress) progress->directories_done = dir + 1;
  }
  r.missing_chunks = m.table.size() - found_referenced;
  r.dedup_ratio =
      r.referenced_bytes ? static_cast<double>(r.logical_bytes) / static_cast<double>(r.referenced_bytes) : 0;
  for (size_t c = 1; c < chains.size(); ++c) {
    ChainSpace& chain = chains[c];
    if (chain.points == 0) continue;  // its only (damaged) point was removed meanwhile
    for (uint32_t n : m.table.chain_digests()[c]) {
      if (size_of_entry[n] != kNoFile) chain.stored_bytes += size_of_entry[n];
    }
    chain.dedup_ratio =
        chain.stored_bytes ? static_cast<double>(chain.logical_bytes) / static_cast<double>(chain.stored_bytes) : 0;
    r.chains.push_back(std::move(chain));  // numbered by name: already in order
  }
  CountQuarantine(repo_dir, &r.quarantined_chunks, &r.quarantined_bytes);
  if (progress) progress->phase = static_cast<int>(GcPhase::kDone);
  return r;
}

// ---- The reports' JSON ------------------------------------------------

namespace {

json::object ParseReportObject(std::string_view text, const std::string& what) {
  json::error_code ec;
  json::value v = json::parse(json::string_view(text.data(), text.size()), ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  return std::move(v.as_object());
}

// Every member a string (any length: problems name paths).
std::vector<std::string> Strings(JsonReader& r, const char* key) {
  std::vector<std::string> out;
  const json::value* v = r.Member(key, true);
  if (!v->is_array()) r.Fail(key, "must be an array of strings");
  for (const auto& item : v->as_array()) {
    if (!item.is_string()) r.Fail(key, "must be an array of strings");
    out.emplace_back(item.as_string());
  }
  return out;
}

}  // namespace

std::string GcReportJson(const GcReport& r) {
  json::object o{{"dry_run", r.dry_run},
                 {"resumed", r.resumed},
                 {"cutoff", r.cutoff},
                 {"points", r.points},
                 {"staged_points", r.staged_points},
                 {"indexes", r.indexes},
                 {"unchecked_indexes", r.unchecked_indexes},
                 {"chunks_referenced", r.chunks_referenced},
                 {"chunks_seen", r.chunks_seen},
                 {"chunks_removed", r.chunks_removed},
                 {"bytes_removed", r.bytes_removed},
                 {"chunks_kept_by_window", r.chunks_kept_by_window},
                 {"bytes_kept_by_window", r.bytes_kept_by_window},
                 {"chunks_retained", r.chunks_retained},
                 {"bytes_retained", r.bytes_retained},
                 {"writers_waited_for", r.writers_waited_for},
                 {"stale_leases_removed", r.stale_leases_removed},
                 {"chunks_rescued", r.chunks_rescued},
                 {"temp_files_removed", r.temp_files_removed},
                 {"quarantined_chunks", r.quarantined_chunks},
                 {"quarantined_bytes", r.quarantined_bytes},
                 {"mark_seconds", r.mark_seconds},
                 {"sweep_seconds", r.sweep_seconds},
                 {"seconds", r.seconds}};
  return json::serialize(o);
}

GcReport GcReportFromJson(std::string_view text) {
  const std::string what = "GC report";
  json::object o = ParseReportObject(text, what);
  JsonReader r(o, "", CorruptFileFail(what));
  GcReport g;
  g.dry_run = *r.Bool("dry_run", true);
  g.resumed = *r.Bool("resumed", true);
  g.cutoff = *r.String("cutoff", true, 64);
  g.points = *r.Unsigned("points", true);
  g.staged_points = *r.Unsigned("staged_points", true);
  g.indexes = *r.Unsigned("indexes", true);
  g.unchecked_indexes = *r.Unsigned("unchecked_indexes", true);
  g.chunks_referenced = *r.Unsigned("chunks_referenced", true);
  g.chunks_seen = *r.Unsigned("chunks_seen", true);
  g.chunks_removed = *r.Unsigned("chunks_removed", true);
  g.bytes_removed = *r.Unsigned("bytes_removed", true);
  g.chunks_kept_by_window = *r.Unsigned("chunks_kept_by_window", true);
  g.bytes_kept_by_window = *r.Unsigned("bytes_kept_by_window", true);
  // Optional: a service older than bucket GC does not send them.
  g.chunks_retained = r.Unsigned("chunks_retained", false).value_or(0);
  g.bytes_retained = r.Unsigned("bytes_retained", false).value_or(0);
  g.writers_waited_for = r.Unsigned("writers_waited_for", false).value_or(0);
  g.stale_leases_removed = r.Unsigned("stale_leases_removed", false).value_or(0);
  g.chunks_rescued = *r.Unsigned("chunks_rescued", true);
  g.temp_files_removed = *r.Unsigned("temp_files_removed", true);
  g.quarantined_chunks = *r.Unsigned("quarantined_chunks", true);
  g.quarantined_bytes = *r.Unsigned("quarantined_bytes", true);
  g.mark_seconds = *r.Double("mark_seconds", true);
  g.sweep_seconds = *r.Double("sweep_seconds", true);
  g.seconds = *r.Double("seconds", true);
  return g;
}

std::string SpaceReportJson(const SpaceReport& r) {
  json::array points, chains, problems;
  for (const auto& p : r.points_space) {
    points.push_back(json::object{{"id", p.id},
                                  {"vm", p.vm},
                                  {"chain", p.chain},
                                  {"logical_bytes", p.logical_bytes},
                                  {"chunks", p.chunks},
                                  {"unique_chunks", p.unique_chunks},
                                  {"unique_bytes", p.unique_bytes}});
  }
  for (const auto& c : r.chains) {
    chains.push_back(json::object{{"chain", c.chain},
                                  {"points", c.points},
                                  {"logical_bytes", c.logical_bytes},
                                  {"chunks", c.chunks},
                                  {"stored_bytes", c.stored_bytes},
                                  {"unique_chunks", c.unique_chunks},
                                  {"unique_bytes", c.unique_bytes},
                                  {"dedup_ratio", c.dedup_ratio}});
  }
  for (const auto& p : r.problems) problems.emplace_back(p);
  json::object o{{"point_count", r.points},
                 {"chunks", r.chunks},
                 {"stored_bytes", r.stored_bytes},
                 {"referenced_chunks", r.referenced_chunks},
                 {"referenced_bytes", r.referenced_bytes},
                 {"missing_chunks", r.missing_chunks},
                 {"garbage_chunks", r.garbage_chunks},
                 {"garbage_bytes", r.garbage_bytes},
                 {"staged_only_chunks", r.staged_only_chunks},
                 {"staged_only_bytes", r.staged_only_bytes},
                 {"logical_bytes", r.logical_bytes},
                 {"quarantined_chunks", r.quarantined_chunks},
                 {"quarantined_bytes", r.quarantined_bytes},
                 {"dedup_ratio", r.dedup_ratio},
                 {"points", std::move(points)},
                 {"chains", std::move(chains)},
                 {"problems", std::move(problems)}};
  return json::serialize(o);
}

SpaceReport SpaceReportFromJson(std::string_view text) {
  const std::string what = "space report";
  json::object o = ParseReportObject(text, what);
  JsonReader r(o, "", CorruptFileFail(what));
  SpaceReport s;
  s.points = *r.Unsigned("point_count", true);
  s.chunks = *r.Unsigned("chunks", true);
  s.stored_bytes = *r.Unsigned("stored_bytes", true);
  s.referenced_chunks = *r.Unsigned("referenced_chunks", true);
  s.referenced_bytes = *r.Unsigned("referenced_bytes", true);
  s.missing_chunks = *r.Unsigned("missing_chunks", true);
  s.garbage_chunks = *r.Unsigned("garbage_chunks", true);
  s.garbage_bytes = *r.Unsigned("garbage_bytes", true);
  s.staged_only_chunks = *r.Unsigned("staged_only_chunks", true);
  s.staged_only_bytes = *r.Unsigned("staged_only_bytes", true);
  s.logical_bytes = *r.Unsigned("logical_bytes", true);
  s.quarantined_chunks = *r.Unsigned("quarantined_chunks", true);
  s.quarantined_bytes = *r.Unsigned("quarantined_bytes", true);
  s.dedup_ratio = *r.Double("dedup_ratio", true);
  std::vector<JsonReader> points = *r.ObjectList("points", true);  // a named list: the loop's range outlives it
  for (auto& p : points) {
    PointSpace ps;
    ps.id = *p.String("id", true);
    ps.vm = *p.String("vm", true);
    ps.chain = *p.String("chain", true);
    ps.logical_bytes = *p.Unsigned("logical_bytes", true);
    ps.chunks = *p.Unsigned("chunks", true);
    ps.unique_chunks = *p.Unsigned("unique_chunks", true);
    ps.unique_bytes = *p.Unsigned("unique_bytes", true);
    s.points_space.push_back(std::move(ps));
  }
  std::vector<JsonReader> chains = *r.ObjectList("chains", true);
  for (auto& c : chains) {
    ChainSpace cs;
    cs.chain = *c.String("chain", true);
    cs.points = *c.Unsigned("points", true);
    cs.logical_bytes = *c.Unsigned("logical_bytes", true);
    cs.chunks = *c.Unsigned("chunks", true);
    cs.stored_bytes = *c.Unsigned("stored_bytes", true);
    cs.unique_chunks = *c.Unsigned("unique_chunks", true);
    cs.unique_bytes = *c.Unsigned("unique_bytes", true);
    cs.dedup_ratio = *c.Double("dedup_ratio", true);
    s.chains.push_back(std::move(cs));
  }
  s.problems = Strings(r, "problems");
  return s;
}

}  // namespace ferry
