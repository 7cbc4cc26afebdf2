#!/usr/bin/env bash
# Runs fuzzer-made hostile files through the `ptero` CLI the way an attacker's files
# would reach it: under a 4 GB address-space limit and a 20 s timeout per command.
# Any exit other than 0/1/2, a signal, a timeout or a panic message is reported.
#
#   cargo build --release -p ptero-cli -p ptero-fuzz
#   ./target/release/ptero-fuzz --dump 2000 --seed 7 --only program --out /tmp/hostile
#   scripts/hostile_cli.sh /tmp/hostile/*.pte
set -u
P="${PTERO:-$(dirname "$0")/../target/release/ptero}"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
bad=0
n=0
for f in "$@"; do
  for cmd in "run" "inspect" "bench --iterations 2 --warmup 0"; do
    n=$((n + 1))
    # shellcheck disable=SC2086
    (ulimit -v 4000000; timeout 20 "$P" $cmd "$f" 2>"$tmp" >/dev/null)
    rc=$?
    out=$(tr -d '\000' <"$tmp")
    if [ "$rc" -gt 2 ] || grep -q "panicked\|internal error" <<<"$out"; then
      echo "BAD (exit $rc) ptero $cmd $f: $(tail -2 <<<"$out")"
      bad=$((bad + 1))
    fi
  done
done
echo "$n runs, $bad bad"
[ "$bad" -eq 0 ]
