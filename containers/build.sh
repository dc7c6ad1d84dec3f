#!/usr/bin/env bash
# Build the Apptainer image from the repo root: containers/build.sh [OUT.sif]
# Needs apptainer (with --fakeroot or root) and a GPU node for the %test section.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/containers/pronlora.sif}
cd "$root"
base=$(sed -n 's/^From: *//p' containers/pronlora.def)
echo "base image: $base"
if command -v skopeo >/dev/null; then
    echo "registry digest of the tag: $(skopeo inspect "docker://${base%@*}" --format '{{.Digest}}')"
fi
apptainer build --fakeroot "$out" containers/pronlora.def
echo "built $out; point PRONLORA_CONTAINER in env.sh at it"
