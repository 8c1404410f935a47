#!/usr/bin/env bash
# Builds the Python modules of assay's contract from proto/ into gen/ (git-ignored):
# gen/assay/v1/*_pb2.py (messages) and *_pb2_grpc.py (the Results service stub).
# Does nothing when gen/ is newer than every .proto file and this script (--force: build
# anyway).
#
# usage: examples/clients/python/generate.sh [--force]
#        PYTHON=... picks the interpreter; default: ./.tools/bin/python when present,
#        else python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
proto="$root/proto"
out="$here/gen"
stamp="$out/.generated"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.tools/bin/python" ]]; then PYTHON="$root/.tools/bin/python"; else PYTHON=python3; fi
fi

# One generator at a time (tests run in parallel processes); the others then find gen/
# fresh and leave it alone, so nobody's imports see it swapped.
if command -v flock >/dev/null; then
  exec 9>"$here/.gen.lock"
  flock 9
fi

if [[ "${1:-}" != "--force" && -f "$stamp" ]] &&
   [[ -z "$(find "$proto" "$here/generate.sh" -newer "$stamp" \( -name '*.proto' -o -name generate.sh \) -print -quit)" ]]; then
  exit 0
fi

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: $PYTHON has no grpcio-tools; run \`make tools\` (or pip install -r $here/requirements.txt)" >&2
  exit 1
fi

mapfile -t files < <(cd "$proto" && find assay -name '*.proto' | sort)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "generate.sh: no .proto files under $proto" >&2
  exit 1
fi
# Build into a fresh directory and swap it in, so a failed run leaves the old gen/ whole.
tmp="$(mktemp -d "$here/.gen.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$proto" && "$PYTHON" -m grpc_tools.protoc -I . --python_out="$tmp" --grpc_python_out="$tmp" "${files[@]}")
touch "$tmp/.generated"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "generated $(find "$out" -name '*.py' | wc -l) modules from ${#files[@]} proto files into $out"
