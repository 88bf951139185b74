#!/usr/bin/env bash
# Fetch the Debian-packaged data sources into a cache folder, without root:
#   Fashion-MNIST   (package dataset-fashion-mnist: IDX files)
#   OpenCV digits   (package opencv-doc: only examples/data/digits.png is kept)
# `apt-get download` needs no root (only the package lists from a prior `apt-get update`);
# `dpkg-deb --fsys-tarfile | tar -x` unpacks without installing. The readers in
# framework/data/sources.py look in $MEDLEY_CACHE/debs/root (default: <checkout>/.cache).
# Where apt is unavailable this prints why and exits 0: the datasets that need these
# sources then say so when prepared, and their tests skip with the reason.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MEDLEY_CACHE:-$here/.cache}/debs"
root="$cache/root"
fashion="$root/usr/share/datasets/fashion-mnist"
digits="$root/usr/share/doc/opencv-doc/examples/data/digits.png"

if [[ -f "$fashion/train-images-idx3-ubyte.gz" && -f "$fashion/t10k-labels-idx1-ubyte.gz" && -f "$digits" ]]; then
    echo "fetch_debs: already present in $root"
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "fetch_debs: apt-get/dpkg-deb not found on this machine; Fashion-MNIST and the OpenCV digit" \
         "sheet are unavailable (datasets fashion_mnist, multifashion, multi_fashion_mnist, multi_source," \
         "seg_label_shift, opencv_digits, digit_domains will report it)" >&2
    exit 0
fi

mkdir -p "$cache" "$root"
cd "$cache"
for pkg in dataset-fashion-mnist opencv-doc; do
    if ! ls "$pkg"_*.deb >/dev/null 2>&1; then
        if ! apt-get download "$pkg" >"$cache/apt-$pkg.log" 2>&1; then
            echo "fetch_debs: 'apt-get download $pkg' failed (run 'apt-get update' once as root?):" >&2
            tail -n 3 "$cache/apt-$pkg.log" >&2
            exit 0
        fi
    fi
done

dpkg-deb --fsys-tarfile dataset-fashion-mnist_*.deb | tar -x -C "$root" ./usr/share/datasets/fashion-mnist
dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x -C "$root" ./usr/share/doc/opencv-doc/examples/data/digits.png
rm -f ./*.deb  # 127 MB of packages, of which we keep 31 MB of data
echo "fetch_debs: Fashion-MNIST and the OpenCV digit sheet are in $root"
