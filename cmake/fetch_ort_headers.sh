#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers from Debian's libonnxruntime-dev (suite trixie) into DEST, without
# touching the system's apt state: a private sources dir, lists and cache. The mirror URI is read from the
# machine's own apt sources, so no host is written into the repository. Prints the include dir on success.
set -euo pipefail
dest=${1:?usage: fetch_ort_headers.sh DEST}
include="$dest/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then echo "$include"; exit 0; fi
command -v apt-get >/dev/null || { echo "fetch_ort_headers: apt-get not found (not a Debian-like system)" >&2; exit 1; }
uri=$(grep -hs -m1 '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n1 || true)
if [ -z "$uri" ]; then
  uri=$(grep -hs -m1 '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -n1 || true)
fi
[ -n "$uri" ] || { echo "fetch_ort_headers: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
work="$dest/apt"
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial"
cat > "$work/parts/trixie.sources" <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts" -o "Dir::State::Lists=$work/lists"
      -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)" -q)
apt-get "${opts[@]}" update >&2
(cd "$work" && apt-get "${opts[@]}" download libonnxruntime-dev >&2)
dpkg -x "$work"/libonnxruntime-dev_*.deb "$dest"
rm -rf "$work"
[ -f "$include/onnxruntime_cxx_api.h" ] || { echo "fetch_ort_headers: headers missing after extraction" >&2; exit 1; }
echo "$include"
