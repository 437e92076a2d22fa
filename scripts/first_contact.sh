#!/usr/bin/env bash
# First contact, as a new user would make it: a fresh clone of this repository, a PATH with no `uv`
# on it, and `make demo` twice. The first run must install everything it needs by itself and start a
# new session; the second must resume it. Called by .ci/run before `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

git clone --quiet "$root" "$work/clone"
# Every directory of PATH that holds a `uv` is left out.
path=""
IFS=:
for dir in $PATH; do
  [ -e "$dir/uv" ] || path="${path:+$path:}$dir"
done
unset IFS
if env PATH="$path" sh -c 'command -v uv' >/dev/null; then
  echo "first contact: could not hide uv from PATH" >&2
  exit 1
fi

cd "$work/clone"
for run in first second; do
  echo "==> first contact: make demo ($run run, fresh clone, no uv on PATH)"
  env -u MONGODB_URI -u VIRTUAL_ENV PATH="$path" make demo 2>&1 | tee "$work/$run.log"
done
grep -q "New session" "$work/first.log" || { echo "first contact: the first run did not start a new session" >&2; exit 1; }
grep -q "Resumed session" "$work/second.log" || { echo "first contact: the second run did not resume" >&2; exit 1; }
test -x .tools/bin/uv -o -x .tools/uv/bin/uv || { echo "first contact: uv was not installed inside the project" >&2; exit 1; }
echo "==> first contact: ok (uv installed in .tools/, the second run resumed the first one's session)"
