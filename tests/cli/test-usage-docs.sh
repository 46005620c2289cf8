#!/usr/bin/env bash
# `ferry CMD --help` and docs/cli.md name the same options for every host
# command (issue 15): the usage line of a command against every
# `ferry COMMAND ...` signature the page shows (in backquotes or in code
# blocks). A mismatch names the command and the options on one side only.
set -euo pipefail
FERRY=$(realpath "${1:?usage: test-usage-docs.sh FERRY DOCS/CLI.MD}")
DOCS=$(realpath "${2:?usage: test-usage-docs.sh FERRY DOCS/CLI.MD}")
python3 - "$FERRY" "$DOCS" <<'PY'
import re, subprocess, sys
ferry, docs_path = sys.argv[1], sys.argv[2]
docs = open(docs_path).read()
commands = ["init", "backup", "list", "restore", "restore-vm", "verify", "prune", "remove", "lock", "gc", "space",
            "inventory", "stage", "backup-disk", "commit", "discard"]
option = re.compile(r"--[a-z][a-z0-9-]*")
in_usage = {}
for c in commands:
    # The usage line of `ferry CMD --help`: its first paragraph.
    help_text = subprocess.run([ferry, c, "--help"], capture_output=True, text=True, check=True).stdout
    in_usage[c] = set(option.findall(help_text.split("\n\n")[0]))
in_docs = {}
# `ferry CMD ...` (a signature may wrap), and code-block lines "ferry CMD ..." up to a comment.
for pattern in (r"`ferry ([a-z-]+) ([^`]*)`", r"(?m)^ferry ([a-z-]+) ([^#\n]*)"):
    for m in re.finditer(pattern, docs):
        if m.group(1) in commands:
            in_docs.setdefault(m.group(1), set()).update(option.findall(m.group(2)))
bad = []
for c in commands:
    u, d = in_usage.get(c, set()), in_docs.get(c, set())
    if not u: bad.append(f"{c}: no options in ferry {c} --help")
    if not d: bad.append(f"{c}: no signature in docs/cli.md")
    if u != d: bad.append(f"{c}: only in --help {sorted(u - d)}, only in docs/cli.md {sorted(d - u)}")
for b in bad: print("FAIL:", b)
if bad: sys.exit(1)
print(f"ok: ferry --help and docs/cli.md agree on the options of {len(commands)} commands")
PY
