#!/bin/sh
# Regenerates protocol/src/qga/schema/generated.rs, the typed QGA
# commands, from the pinned protocol/schema/qga/qapi-schema.json (see
# SOURCE.md there). `--check` only compares, and fails when the committed
# file is out of date.
set -eu
cd "$(dirname "$0")/.."
exec cargo run --quiet --package qga-codegen -- "$@"
