// Versioned format names, one rule for all of them (docs/repository-format.md,
// "Compatibility"): binary files start with an 8-byte magic, a 6-letter family
// and a 2-digit version ("FRYCHK01"); JSON files carry a "format" string,
// a family and "-v<N>" ("ferry-restore-point-v2"). A reader that meets a
// version newer than it knows says so (kBadInput: upgrade Ferry), and never
// calls it damage: a newer file is not corrupt and must not be quarantined.
#pragma once

#include <string>
#include <string_view>

namespace ferry {

// Checks the 8 bytes at `got` against `family` (6 letters) with versions
// 1..`newest`. Returns the version. Throws kBadInput for a newer version,
// kCorrupt ("bad magic") for anything else; `what` names the file.
int CheckMagic(const unsigned char* got, std::string_view family, int newest, const std::string& what);

// The 8-byte magic of `family` at `version`.
std::string Magic(std::string_view family, int version);

// Parses "<family>-v<N>". Returns N (1..`newest`). Throws kBadInput for a newer
// N, kCorrupt for anything else; `what` names the file.
int CheckFormatName(const std::string& got, std::string_view family, int newest, const std::string& what);

}  // namespace ferry
