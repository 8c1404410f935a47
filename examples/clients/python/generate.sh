#!/usr/bin/env bash
# Builds the Python modules of assay's contract from proto/ into gen/ (git-ignored):
# gen/assay/v1/*_pb2.py (messages) and *_pb2_grpc.py (the Results service stub).
#
# usage: examples/clients/python/generate.sh     (PYTHON=... picks the interpreter; default:
#        ./.tools/bin/python when present, else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
proto="$root/proto"
out="$here/gen"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.tools/bin/python" ]]; then PYTHON="$root/.tools/bin/python"; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: $PYTHON has no grpcio-tools; run \`make tools\` (or pip install -r $here/requirements.txt)" >&2
  exit 1
fi

# Build into a fresh directory next to gen/ and swap it in, so a failed or concurrent run
# never leaves half a package behind.
tmp="$(mktemp -d "$here/.gen.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mapfile -t files < <(cd "$proto" && find assay -name '*.proto' | sort)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "generate.sh: no .proto files under $proto" >&2
  exit 1
fi
(cd "$proto" && "$PYTHON" -m grpc_tools.protoc -I . --python_out="$tmp" --grpc_python_out="$tmp" "${files[@]}")
rm -rf "$out.old"
if [[ -d "$out" ]]; then mv "$out" "$out.old"; fi
mv "$tmp" "$out"
rm -rf "$out.old"
trap - EXIT
echo "generated $(find "$out" -name '*.py' | wc -l) modules into $out"
