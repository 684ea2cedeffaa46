#!/usr/bin/env bash
# Build every cellpix image from a local Debian base and smoke-test each one inside the build.
#
#   containers/build-test.sh [--with-r] [--only STEP[,STEP...]] [--python PATH]
#
# Works without a Docker engine or registry: the base root filesystem is made with debootstrap and imported
# into podman; images are built with `podman build --isolation chroot`, and each step's smoke test is a RUN
# in a build stage (containers/smoke/Dockerfile), since `podman run` is refused on machines like ours.
# The host CA bundle is mounted so pip (and apt) inside the build reach their registries.
# Images are tagged as the Galaxy tools and Nextflow modules name them: ghcr.io/cellpix/cellpix-STEP:VERSION.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
with_r=0
only=
python=${PYTHON:-$root/.venv/bin/python}
while [ $# -gt 0 ]; do
    case $1 in
        --with-r) with_r=1 ;;
        --only) only=$2; shift ;;
        --python) python=$2; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
for tool in podman debootstrap; do
    command -v "$tool" > /dev/null || { echo "$tool is needed: apt-get install podman debootstrap" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
registry=ghcr.io/cellpix
debian=localhost/cellpix-debian:bookworm
ca=/etc/ssl/certs/ca-certificates.crt
build=(podman build --isolation chroot --layers -v "$ca:$ca:ro" --build-arg "CELLPIX_VERSION=$version")
steps=(integrate image train annotate explain)
[ "$with_r" = 1 ] && steps+=(integrate-r)
if [ -n "$only" ]; then  # the base and the steps named (integrate-r builds on integrate: name both)
    IFS=, read -r -a steps <<< "$only"
    for step in "${steps[@]}"; do
        [ -f "$here/$step/Dockerfile" ] || { echo "--only: no step image $step (containers/$step/Dockerfile)" >&2; exit 2; }
    done
fi
log=$(mktemp -d)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
started=$SECONDS
stamp() { printf '%-28s %4ds\n' "$1" $((SECONDS - $2)) | tee -a "$log/timings"; }

t=$SECONDS
if ! podman image exists "$debian"; then
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$rootfs" \
        http://deb.debian.org/debian > "$log/debootstrap.log"
    tar -C "$rootfs" -c . | podman import - "$debian" > /dev/null
    rm -rf "$rootfs"
fi
stamp "debootstrap base" "$t"

# The build context: Dockerfiles and locks, the cellpix wheel, and the smoke data (the Galaxy test data).
cp -r "$here"/. "$ctx"/
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$ctx/dist" "$root" > /dev/null
mkdir -p "$ctx/smoke/data"
cp "$root"/galaxy_tools/cellpix/test-data/* "$ctx/smoke/data/"

t=$SECONDS
"${build[@]}" --build-arg "BASE_IMAGE=$debian" -t "$registry/cellpix-base:$version" -f "$ctx/base/Dockerfile" \
    "$ctx" > "$log/base.log" 2>&1 || { tail -30 "$log/base.log"; exit 1; }
stamp "cellpix-base" "$t"
for step in "${steps[@]}"; do
    parent=$registry/cellpix-base:$version
    [ "$step" = integrate-r ] && parent=$registry/cellpix-integrate:$version
    image=$registry/cellpix-$step:$version
    t=$SECONDS
    "${build[@]}" --build-arg "BASE_IMAGE=$parent" -t "$image" -f "$ctx/$step/Dockerfile" "$ctx" \
        > "$log/$step.log" 2>&1 || { tail -30 "$log/$step.log"; exit 1; }
    stamp "cellpix-$step" "$t"
    t=$SECONDS
    "${build[@]}" --build-arg "STEP_IMAGE=$image" --build-arg "STEP=$step" -t "localhost/cellpix-smoke-$step" \
        -f "$ctx/smoke/Dockerfile" "$ctx" > "$log/smoke-$step.log" 2>&1 || { tail -40 "$log/smoke-$step.log"; exit 1; }
    grep -q "smoke $step: ok" "$log/smoke-$step.log"
    podman rmi -f "localhost/cellpix-smoke-$step" > /dev/null
    stamp "smoke $step" "$t"
done
stamp "total" "$started"
podman images --filter "reference=$registry/*" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
echo "build logs and timings in $log"
