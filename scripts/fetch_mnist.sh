#!/usr/bin/env bash
# scripts/fetch_mnist.sh DEST — download the four MNIST .gz files into DEST and check them.
#
# Tries each mirror in turn (override with MNIST_MIRRORS="URL URL ...", file:// allowed), keeps a
# file only if its SHA-256 matches the canonical release (docs: /work/shared/mnist/SOURCE.md),
# and moves it into place atomically, so DEST never holds a partial or unverified file. Files
# already present with the right checksum are kept. On failure: one line on stderr, exit 1
# (a wrong command line, or a DEST that is not a directory and cannot be made one: exit 2).
#
#   scripts/fetch_mnist.sh data/mnist          # ./data/mnist is one of the places the app looks
#   MNIST_MIRRORS=file:///mnt/mnist/ scripts/fetch_mnist.sh ~/mnist
#
# MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, licensed CC BY-SA 3.0.
set -euo pipefail

die() { echo "fetch_mnist.sh: $*" >&2; exit 1; }

usage="usage: scripts/fetch_mnist.sh DEST (a directory; created if needed)"
[[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]] && { echo "$usage"; exit 0; }
[[ $# -eq 1 && -n "$1" && "$1" != -* ]] || { echo "fetch_mnist.sh: $usage (a name starting with - : write ./NAME)" >&2; exit 2; }
dest=$1

# DEST is checked before mkdir: mkdir's own message would be a second line before ours. A path
# that exists must be a directory; otherwise its nearest existing ancestor must be one.
bad_dest() { echo "fetch_mnist.sh: $dest: $*" >&2; exit 2; }
if [[ -e $dest || -L $dest ]]; then
  [[ -d $dest ]] || bad_dest "exists and is not a directory"
else
  above=$dest
  while [[ ! -e $above && ! -L $above ]]; do above=$(dirname -- "$above"); done
  [[ -d $above ]] || bad_dest "cannot be created: $above is not a directory"
fi

mirrors=${MNIST_MIRRORS:-"https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/ http://yann.lecun.com/exdb/mnist/"}
read -ra mirror_list <<<"$mirrors"

# name -> SHA-256 of the canonical .gz (the values TFDS/Keras publish).
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
declare -A sha256=(
  [train-images-idx3-ubyte.gz]=440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609
  [train-labels-idx1-ubyte.gz]=3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c
  [t10k-images-idx3-ubyte.gz]=8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6
  [t10k-labels-idx1-ubyte.gz]=f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6
)

# sha256_of FILE -> the hex digest (sha256sum on Linux, shasum on macOS).
if command -v sha256sum >/dev/null; then
  sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null; then
  sha256_of() { shasum -a 256 -- "$1" | cut -d' ' -f1; }
else
  die "need sha256sum or shasum to verify the downloads"
fi

# download URL FILE -> 0 on success. curl reads file:// itself; wget does not, so copy those.
if command -v curl >/dev/null; then
  download() { curl --fail --silent --show-error --location --retry 2 --connect-timeout 20 -o "$2" -- "$1"; }
elif command -v wget >/dev/null; then
  download() {
    case $1 in
      file://*) cp -- "${1#file://}" "$2" ;;
      *) wget --quiet --tries=2 --timeout=20 -O "$2" -- "$1" ;;
    esac
  }
else
  die "need curl or wget to download MNIST"
fi

# Still possible: no permission. mkdir's reason ("Permission denied") goes into our one line.
error=$(mkdir -p -- "$dest" 2>&1) || bad_dest "cannot be created (${error##*: })"

# The file being downloaded; removed on any exit so no partial file is left behind.
partial=""
trap 'if [[ -n $partial ]]; then rm -f -- "$partial"; fi' EXIT
trap 'exit 130' INT TERM

for name in "${files[@]}"; do
  want=${sha256[$name]}
  target=$dest/$name
  if [[ -f $target && $(sha256_of "$target") == "$want" ]]; then
    echo "$target: present, checksum ok"
    continue
  fi
  if [[ -e $target ]]; then echo "$target: present but its checksum is wrong; fetching it again"; fi

  partial=$(mktemp "$dest/.$name.XXXXXX" 2>/dev/null) || die "cannot create a temporary file in $dest"
  tried=""
  for mirror in "${mirror_list[@]}"; do
    url=${mirror%/}/$name
    if ! error=$(download "$url" "$partial" 2>&1); then
      error=${error##*$'\n'}  # a retrying downloader repeats itself: keep its last line
      tried+="${tried:+; }$url: ${error:-download failed}"
    elif [[ $(sha256_of "$partial") != "$want" ]]; then
      tried+="${tried:+; }$url: wrong sha256"
    else
      chmod 0644 "$partial"
      mv -f -- "$partial" "$target"  # same directory: an atomic rename
      partial=""
      echo "$target: fetched from $url, checksum ok"
      break
    fi
  done
  [[ -z $partial ]] || die "could not fetch $name from any mirror (${tried:-no mirrors given}); set MNIST_MIRRORS to a working mirror or copy the files into $dest"
done
