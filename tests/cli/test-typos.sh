#!/usr/bin/env bash
# Mistakes a user makes on the command line (issue 15): a mistyped command,
# option, coordinator resource or action is refused in one line, exit 2,
# with the closest correct spelling, and never with the whole usage; an
# unknown coordinator action is refused before any request is sent (the
# URL below has nothing listening). Needs no VM and no coordinator.
set -euo pipefail
FERRY=$(realpath "${1:?usage: test-typos.sh FERRY}")
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
export FERRY_TOKEN=not-used
NOWHERE=http://127.0.0.1:1
expect() {  # WANT-SUBSTRING COMMAND...: exit 2, one line, containing WANT
  local want=$1; shift
  local rc=0 out
  out=$("$@" 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "'$*' exited $rc: $out"
  [[ $(wc -l <<<"$out") == 1 ]] || fail "'$*' printed more than one line: $out"
  [[ $out == *"$want"* ]] || fail "'$*' said '$out', not '$want'"
  ok "$* -> $out"
}
expect "unknown command 'bakup' (did you mean 'backup'?)" "$FERRY" bakup
expect "unknown command 'frobnicate'; 'ferry --help'" "$FERRY" frobnicate
expect "unknown option --repoo (did you mean '--repo'?)" "$FERRY" list --repoo /x
expect "unknown option --keep-lsat (did you mean '--keep-last'?)" "$FERRY" prune --repo /x --keep-lsat 3
expect "unknown command 'jbo' (did you mean 'job'?)" "$FERRY" --coordinator "$NOWHERE" jbo list
expect "unknown action 'strat' for job (did you mean 'start'?)" "$FERRY" --coordinator "$NOWHERE" job strat nightly
expect "unknown action 'restart' for job" "$FERRY" --coordinator "$NOWHERE" job restart nightly
expect "unknown action 'delete' for point" "$FERRY" --coordinator "$NOWHERE" point delete 3
# Options, coordinator ones too, anywhere on the line; each command takes only its own.
expect "unknown action 'strat' for job" "$FERRY" job strat nightly --coordinator "$NOWHERE"
expect "ferry job list takes no option --platform" "$FERRY" job list --platform libvirt --coordinator "$NOWHERE"
expect "unknown option --frobnicate" "$FERRY" list --frobnicate --verbose
expect "missing JOB" "$FERRY" job show --coordinator "$NOWHERE"
expect "unexpected argument 'extra'" "$FERRY" job show nightly extra --coordinator "$NOWHERE"
expect "'job' is not a URL" "$FERRY" --coordinator job session list
expect "ferry list takes no option --coordinator" "$FERRY" --coordinator job list
expect "job needs an action: list, show" "$FERRY" job --coordinator "$NOWHERE"
# The environment stands for --repo and for --coordinator's URL.
out=$(FERRY_REPO=/nonexistent/repo "$FERRY" list 2>&1) && fail "list of a missing FERRY_REPO succeeded"
[[ $out == *"/nonexistent/repo does not exist"* ]] || fail "FERRY_REPO was not used: $out"
out=$(env -u FERRY_REPO "$FERRY" list 2>&1) && fail "list without a repository succeeded"
[[ $out == *"missing required option --repo"*"FERRY_REPO"* ]] || fail "without --repo: $out"
out=$(FERRY_COORDINATOR=$NOWHERE "$FERRY" job list 2>&1) && fail "job list against nothing succeeded"
[[ $out == *"127.0.0.1:1/api/v1/jobs"* ]] || fail "FERRY_COORDINATOR was not used: $out"
ok "FERRY_REPO and FERRY_COORDINATOR stand for --repo and the URL"
echo "PASS: $(basename "$0")"
