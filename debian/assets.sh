#!/bin/sh
# Generates the package's documentation assets from the binary being packaged (so they always
# match it): the man page, shell completions and the configuration's JSON Schema.
# Usage: debian/assets.sh BINARY OUTDIR
set -eu
bin=$1 out=$2
mkdir -p "$out"
"$bin" man | gzip -9n > "$out/fulcrum.1.gz"
"$bin" completions bash > "$out/fulcrum.bash"
"$bin" completions zsh > "$out/_fulcrum"
"$bin" completions fish > "$out/fulcrum.fish"
"$bin" schema > "$out/fulcrum.schema.json"
