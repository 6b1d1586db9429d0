# Sourced by scripts/image.sh and scripts/image_test.sh: the container tools and their settings.
# - installs podman, buildah, runc, skopeo and debootstrap from Debian when they are missing;
# - points podman/buildah at the project's deploy/podman/{containers,storage}.conf (never at /etc);
# - RUN steps of builds use chroot isolation (host networking is passed per build).
# shellcheck shell=bash

LUNGCT_ROOT=${LUNGCT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
LUNGCT_BUILD_DIR=${LUNGCT_BUILD_DIR:-$LUNGCT_ROOT/build/image}
mkdir -p "$LUNGCT_BUILD_DIR"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_container_tools() {
    local missing=()
    for tool in podman buildah runc skopeo debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install podman buildah runc skopeo debootstrap (apt-get, as root)"
    log "installing from Debian: podman buildah runc skopeo debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        podman buildah runc skopeo debootstrap fuse-overlayfs slirp4netns uidmap \
        containernetworking-plugins iptables >/dev/null
}

# The project's containers.conf pins nofile to the hard limit measured on the build machine
# (20000); where `ulimit -Hn` is lower, use a copy with nofile lowered to that hard limit.
setup_podman_conf() {
    local conf=$LUNGCT_ROOT/deploy/podman/containers.conf hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt 20000 ]; then
        mkdir -p "$LUNGCT_BUILD_DIR/podman"
        sed "s/nofile=20000:20000/nofile=$hard:$hard/" "$conf" > "$LUNGCT_BUILD_DIR/podman/containers.conf"
        conf=$LUNGCT_BUILD_DIR/podman/containers.conf
    fi
    export CONTAINERS_CONF=$conf
    export CONTAINERS_STORAGE_CONF=$LUNGCT_ROOT/deploy/podman/storage.conf
    export BUILDAH_ISOLATION=chroot
}
