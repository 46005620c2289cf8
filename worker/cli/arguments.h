// A deliberately small command-line parser: "--name value" and "--flag"
// options, repeatable ones, and a clear error naming the option for anything
// unknown, missing or malformed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ferry::cli {

class Arguments {
 public:
  // `valued`: options that take a value; `flags`: options that do not.
  // Throws kBadInput for unknown options, missing values, stray words.
  Arguments(const std::vector<std::string>& args, const std::set<std::string>& valued,
            const std::set<std::string>& flags);

  bool Has(const std::string& name) const;
  std::optional<std::string> Get(const std::string& name) const;
  std::string Require(const std::string& name) const;
  std::vector<std::string> GetAll(const std::string& name) const;
  // Sizes like 4M, 512K, 1G, or plain bytes. Throws kBadInput naming the option.
  std::optional<uint64_t> GetSize(const std::string& name) const;
  std::optional<int64_t> GetInt(const std::string& name, int64_t min, int64_t max) const;

 private:
  std::multimap<std::string, std::string> values_;
};

}  // namespace ferry::cli
