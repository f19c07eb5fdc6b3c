#!/usr/bin/env bash
# scripts/get_cudnn_frontend.sh — make the cudnn-frontend headers (NVIDIA's header-only C++ graph
# API for cuDNN) available to the build, without committing them and without touching the
# machine's own apt state.
#
#   bash scripts/get_cudnn_frontend.sh        # quiet on success; one line on stderr and exit 1 on failure
#
# Nothing to do when CUDNN_FRONTEND_ROOT is set (the caller has its own copy), when a system install
# exists (/usr/include/cudnn_frontend.h), or when a previous run already filled
# third_party/cudnn-frontend/include. Otherwise: download Debian's libcudnn-frontend-dev 1.8.0
# (trixie, component contrib, arch all, headers only) with `apt-get download` through a private apt
# configuration under /tmp that reuses this machine's Debian mirror, unpack it with `dpkg -x`, and
# move its include tree to third_party/cudnn-frontend/include (git-ignored).
#
# Why apt and not GitHub: the machines here reach Debian's mirror but not GitHub. The package's
# Depends (nvidia-cudnn, an installer that downloads; nlohmann-json3-dev) are not needed — we only
# want the headers, and we build with CUDNN_FRONTEND_SKIP_JSON_LIB.
#
# Signatures: trixie's Release file is signed with the trixie archive keys, and bookworm's
# debian-archive-keyring (2023.3+deb12u2 here) already ships them in
# /usr/share/keyrings/debian-archive-keyring.gpg (checked: "Debian Archive Automatic Signing Key
# (13/trixie)" is in it, and `apt-get update` verifies trixie's InRelease with it). So the private
# source list names that keyring and apt verifies the index as usual; the .deb is then checked against
# the index's SHA256. There is no [trusted=yes] fallback: if the signature does not verify (an older
# keyring), this script fails and says so — update debian-archive-keyring, or set CUDNN_FRONTEND_ROOT.
set -euo pipefail
[ $# -eq 0 ] || { echo "get_cudnn_frontend.sh: takes no arguments (got '$1'); its first lines say what it does" >&2; exit 2; }

PACKAGE=libcudnn-frontend-dev
VERSION=1.8.0
SUITE=trixie
COMPONENT=contrib
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$repo_root/third_party/cudnn-frontend

fail() {
  echo "get_cudnn_frontend.sh: $*" >&2
  exit 1
}

# ---- Already available? ---------------------------------------------------------------------
if [[ -n ${CUDNN_FRONTEND_ROOT:-} ]]; then
  [[ -f $CUDNN_FRONTEND_ROOT/include/cudnn_frontend.h ]] ||
    fail "CUDNN_FRONTEND_ROOT=$CUDNN_FRONTEND_ROOT has no include/cudnn_frontend.h"
  exit 0
fi
[[ -f /usr/include/cudnn_frontend.h ]] && exit 0
[[ -f $dest/include/cudnn_frontend.h ]] && exit 0

# ---- Find this machine's Debian mirror --------------------------------------------------------
# deb822 files first (Debian 12's default), then one-line sources.list entries.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f $f ]] || continue
  # First URIs: line whose URI ends in /debian (not debian-security).
  mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
  [[ -n $mirror ]] && break
done
if [[ -z $mirror ]]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*\/debian\/?$/) { print $i; exit } }' "$f")
    [[ -n $mirror ]] && break
  done
fi
[[ -n $mirror ]] || fail "no Debian mirror found in /etc/apt/sources.list{,.d}; set CUDNN_FRONTEND_ROOT instead"
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  fail "apt-get and dpkg are needed (or set CUDNN_FRONTEND_ROOT)"
fi
[[ -f $KEYRING ]] || fail "$KEYRING missing (install debian-archive-keyring, or set CUDNN_FRONTEND_ROOT)"

# ---- Private apt configuration under /tmp -------------------------------------------------------
work=$(mktemp -d /tmp/cudnn-frontend.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/download"
echo "deb [signed-by=$KEYRING] ${mirror%/} $SUITE $COMPONENT" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
  -o "Debug::NoLocking=1"
)
# Index files are downloaded by the unprivileged _apt user when we run as root; a mktemp dir is 0700.
chmod 755 "$work" "$work/download"
chown -R _apt "$work/lists" "$work/download" 2>/dev/null || true

log=$work/apt.log
apt-get "${apt_opts[@]}" -q update >"$log" 2>&1 ||
  fail "apt-get update of '$mirror $SUITE $COMPONENT' failed: $(grep -m1 -E '^(E|W):' "$log" || tail -n1 "$log")"
grep -q -E '^(W|E):.*(NO_PUBKEY|not signed|EXPKEYSIG|BADSIG)' "$log" &&
  fail "signature of $SUITE's Release file did not verify with $KEYRING: $(grep -m1 -E '^(W|E):' "$log")"
(cd "$work/download" && apt-get "${apt_opts[@]}" -q download "$PACKAGE=$VERSION*" >>"$log" 2>&1) ||
  fail "apt-get download $PACKAGE=$VERSION failed: $(grep -m1 -E '^(E|W):' "$log" || tail -n1 "$log")"

deb=$(find "$work/download" -maxdepth 1 -name "${PACKAGE}_*.deb" -print -quit)
[[ -n $deb ]] || fail "apt-get download produced no .deb for $PACKAGE"
dpkg -x "$deb" "$work/root" || fail "dpkg -x $deb failed"
header=$(find "$work/root" -name cudnn_frontend.h -print -quit)
[[ -n $header ]] || fail "$PACKAGE has no cudnn_frontend.h"

# Move the include tree into place atomically enough for a build folder: stage beside it, then rename.
mkdir -p "$repo_root/third_party"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
mv "$(dirname "$header")" "$dest.tmp/include"
echo "$PACKAGE $VERSION from ${mirror%/} $SUITE/$COMPONENT ($(basename "$deb"))" >"$dest.tmp/SOURCE"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
