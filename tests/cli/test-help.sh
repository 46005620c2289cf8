#!/usr/bin/env bash
# Help, man pages, completion and the command reference of every binary
# (issue 15), all made from each program's definitions
# (ferry/common/command_line.h):
# - `P --help` and `P help` print the overview; for every command it lists,
#   `P CMD --help`, `P help CMD` and `P CMD ... --help` (options before and
#   after) print that command's usage and every option its usage line names;
# - `P --generate-man` renders with groff without a warning, and names every
#   command;
# - `P --generate-bash-completion` is valid bash and completes commands,
#   actions, options and option values;
# - docs/cli-reference.md is what the definitions make today (regenerate it
#   with scripts/cli-reference when this fails).
# Needs no VM, coordinator or repository.
set -euo pipefail
DOCS=$(realpath "${1:?usage: test-help.sh DOCS/CLI-REFERENCE.MD FERRY FERRY-COORDINATOR FERRY-WORKER FERRY-REPOSITORY}")
shift
PROGRAMS=("$@")
(( ${#PROGRAMS[@]} == 4 )) || { echo "usage: test-help.sh DOCS FERRY FERRY-COORDINATOR FERRY-WORKER FERRY-REPOSITORY" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-help-XXXXXX")
trap 'rc=$?; rm -rf "$WORK"; ((rc == 0)) && echo "PASS: $(basename "$0")" || echo "FAIL: $(basename "$0")"; exit $rc' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

for p in "${PROGRAMS[@]}"; do
  name=$(basename "$p")
  overview=$("$p" --help) || fail "$name --help exited $?"
  [[ $overview == "usage: $name"* ]] || fail "$name --help does not begin with its usage: ${overview:0:80}"
  [[ $("$p" help) == "$overview" ]] || fail "$name help differs from $name --help"
  # The commands of the overview: "  NAME   summary" lines under a "...:" heading.
  mapfile -t commands < <(awk '/^[A-Z].*:$/ {inside=1; next} /^$/ {inside=0} inside && /^  [a-z]/ {
                               line=$0; sub(/^  /, "", line); split(line, parts, /  +/); print parts[1] }' <<<"$overview")
  checked=0
  for c in "${commands[@]}"; do
    [[ $c == -* ]] && continue  # an option table, not a command
    read -ra words <<<"$c"
    help=$("$p" "${words[@]}" --help) || fail "$name $c --help exited $?"
    [[ $help == "usage: $name $c"* ]] || fail "$name $c --help: ${help:0:100}"
    [[ $("$p" help "${words[@]}") == "$help"* ]] || fail "$name help $c is not $name $c --help"
    [[ $("$p" --help "${words[@]}") == "$help" ]] || fail "$name --help $c is not $name $c --help"
    [[ $("$p" "${words[@]}" --json --help) == "$help" ]] || fail "$name $c --json --help is not its help"
    usage=$(sed -n '1,/^$/p' <<<"$help")
    options=$(sed -n '/^Options:$/,$p' <<<"$help")
    for o in $(grep -oE -- '--[a-z][a-z0-9-]*' <<<"$usage" | sort -u); do
      grep -qE -- "^  $o( |$)" <<<"$options" || fail "$name $c --help: $o is in the usage line but not under Options"
    done
    checked=$((checked + 1))
  done
  # A program without commands has its options in the overview.
  if ((checked == 0)); then
    grep -q '^Options:$' <<<"$overview" || fail "$name --help lists neither commands nor options"
  fi
  "$p" --version >/dev/null || fail "$name --version"

  "$p" --generate-man >"$WORK/$name.man"
  warnings=$(groff -man -ww -z "$WORK/$name.man" 2>&1) || fail "$name's man page: groff failed: $warnings"
  [[ -z $warnings ]] || fail "$name's man page: groff warns: $warnings"
  grep -q "^\.TH $(tr a-z A-Z <<<"$name") " "$WORK/$name.man" || fail "$name's man page has no .TH line"
  for c in "${commands[@]}"; do
    [[ $c == -* ]] && continue
    grep -qF ".SS \"$(sed 's/-/\\-/g' <<<"$c")\"" "$WORK/$name.man" || fail "$name's man page lacks the command '$c'"
  done

  "$p" --generate-bash-completion >"$WORK/$name.bash"
  bash -n "$WORK/$name.bash" || fail "$name's bash completion is not valid bash"
  ok "$name: --help, help CMD and CMD --help for ${checked} commands; man page; completion"
done

# Completion, driven as bash drives it.
FERRY=${PROGRAMS[0]}
"$FERRY" --generate-bash-completion >"$WORK/ferry.bash"
complete_words() {  # WORDS...: what completing the last word offers
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _ferry_complete_ferry; echo "${COMPREPLY[*]}"' \
    _ "$WORK/ferry.bash" "$@"
}
expect_completion() {  # WANT WORDS...
  local want=$1; shift
  local got; got=$(complete_words "$@")
  [[ " $got " == *" $want "* ]] || fail "completing '$*' offered '$got', not '$want'"
}
expect_completion backup ferry bac
expect_completion backup-disk ferry bac
expect_completion create ferry job cr
expect_completion disk ferry restore ""
expect_completion --keep-daily ferry job create nightly --keep-d
expect_completion --repo-token-file ferry backup --repo /r --repo-t
expect_completion qcow2 ferry restore-vm --format ""
expect_completion --verbose ferry list --verb
got=$(complete_words ferry job create x --kee)
[[ $got != *--qmp* ]] || fail "job create completes host options: $got"
ok "bash completion: commands, actions, options, values"

# The reference in docs/ is what the definitions make.
bash "$(dirname "$0")/../../scripts/cli-reference" "$WORK/cli-reference.md" "${PROGRAMS[@]}"
if ! diff -u "$DOCS" "$WORK/cli-reference.md" >"$WORK/diff"; then
  head -40 "$WORK/diff" >&2
  fail "docs/cli-reference.md is out of date: run scripts/cli-reference"
fi
ok "docs/cli-reference.md matches the definitions"
