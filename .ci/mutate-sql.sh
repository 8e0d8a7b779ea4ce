#!/usr/bin/env bash
# The stores' mutation check: both stores run each statement from one text
# (src/authority/store/sql.rs), so changing one statement there must fail
# the store suite (tests/store.rs) on SQLite and on PostgreSQL alike. The
# file is restored on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
file=src/authority/store/sql.rs
test=leases_fall_due_in_expiry_order_and_end_once
cp "$file" "$file.orig"
trap 'mv "$file.orig" "$file"' EXIT
# DELETED: a lease that expired would end as if revoked.
sed -i "s/THEN 'expired' ELSE 'revoked' END/THEN 'revoked' ELSE 'revoked' END/" "$file"
if cmp -s "$file" "$file.orig"; then
  echo "mutate-sql: the mutation no longer applies; update this script" >&2
  exit 1
fi
if out=$(cargo test --test store 2>&1); then
  echo "mutate-sql: the store suite passed with a changed statement" >&2
  exit 1
fi
for engine in sqlite postgres; do
  if ! grep -q "^test $engine::$test \.\.\. FAILED" <<<"$out"; then
    echo "$out" | tail -n 40
    echo "mutate-sql: $engine::$test did not fail" >&2
    exit 1
  fi
done
echo "mutate-sql: one changed statement failed $test on both engines"
