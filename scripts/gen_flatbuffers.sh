#!/usr/bin/env bash
# Regenerates the Rust flatbuffer bindings committed under crates/*/src/generated/.
# Needs flatc 24.3.25 (the one the reference venv ships: .venv-ref/bin/flatc) to match
# the `flatbuffers` crate version pinned in Cargo.toml. The schemas are read from
# ../shared/reference/schemas and are not copied into this repository.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
schemas=${SCHEMAS:-$root/../shared/reference/schemas}
flatc=${FLATC:-$root/.venv-ref/bin/flatc}
"$flatc" --version | grep -q '24.3.25' || { echo "need flatc 24.3.25, got: $("$flatc" --version)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# program.fbs includes "scalar_type.fbs": restore the upstream file names.
cp "$schemas/schema_program.fbs" "$tmp/program.fbs"
cp "$schemas/schema_scalar_type.fbs" "$tmp/scalar_type.fbs"
out=$root/crates/ptero-format/src
mkdir -p "$out"
"$flatc" --rust --gen-all -o "$tmp/out" "$tmp/program.fbs"
cp "$tmp/out/program_generated.rs" "$out/program_generated.rs"
echo "wrote $out/program_generated.rs"
