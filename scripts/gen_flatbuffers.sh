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
# External data files (.ptd, identifier FT01); they include scalar_type.fbs like program.fbs.
cp "$schemas/extension_flat_tensor_serialize_flat_tensor.fbs" "$tmp/flat_tensor.fbs"
"$flatc" --rust --gen-all -o "$tmp/out" "$tmp/flat_tensor.fbs"
cp "$tmp/out/flat_tensor_generated.rs" "$out/flat_tensor_generated.rs"
echo "wrote $out/flat_tensor_generated.rs"
# The XNNPACK delegate's graph: the runtime schema (identifier XN00) is a superset of the
# exporter's (XN01: the same tables with the legacy buffers marked deprecated), so one set
# of bindings reads both.
cp "$schemas/backends_xnnpack_serialization_runtime_schema.fbs" "$tmp/runtime_schema.fbs"
"$flatc" --rust --gen-all -o "$tmp/out" "$tmp/runtime_schema.fbs"
cp "$tmp/out/runtime_schema_generated.rs" "$root/crates/ptero-xnnpack/src/schema_generated.rs"
echo "wrote $root/crates/ptero-xnnpack/src/schema_generated.rs"
# Devtools: ETDump (ED00, written by the event tracer) and bundled programs (BP08, read).
cp "$schemas/devtools_etdump_etdump_schema_flatcc.fbs" "$tmp/etdump_schema_flatcc.fbs"
"$flatc" --rust --gen-all -o "$tmp/out" "$tmp/etdump_schema_flatcc.fbs"
mkdir -p "$root/crates/ptero-devtools/src"
cp "$tmp/out/etdump_schema_flatcc_generated.rs" "$root/crates/ptero-devtools/src/etdump_generated.rs"
echo "wrote $root/crates/ptero-devtools/src/etdump_generated.rs"
cp "$schemas/devtools_bundled_program_schema_bundled_program_schema.fbs" "$tmp/bundled_program_schema.fbs"
"$flatc" --rust --gen-all -o "$tmp/out" "$tmp/bundled_program_schema.fbs"
cp "$tmp/out/bundled_program_schema_generated.rs" "$root/crates/ptero-devtools/src/bundled_generated.rs"
echo "wrote $root/crates/ptero-devtools/src/bundled_generated.rs"
