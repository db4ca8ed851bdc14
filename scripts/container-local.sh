#!/usr/bin/env bash
# The container image on a machine without a registry (CI, air-gapped hosts), with podman.
#
#   scripts/container-local.sh install  install podman and friends (apt, Debian/Ubuntu, as root) if needed
#   scripts/container-local.sh base     assemble the local base image: Debian minbase (mmdebstrap) + this host's
#                                       node and npm + a `node` user (uid 1000) + this host's CA bundle
#   scripts/container-local.sh build    build the project's Dockerfile on that base (BASE_IMAGE build arg);
#                                       prints the build time and the image size
#   scripts/container-local.sh env      print the environment the container tests read
#                                       (eval "$(scripts/container-local.sh env)")
#   scripts/container-local.sh service  start the Docker-compatible API (podman system service) for testcontainers
#   scripts/container-local.sh stop     stop that API service
#   scripts/container-local.sh size     print the image size in bytes
#   scripts/container-local.sh reset    stop, remove the images and the state directory
#
# Idempotent: `base` reuses an existing base image, `service` a running service. Every podman call uses
# scripts/containers.conf (CONTAINERS_CONF), so nothing under /etc/containers is edited.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${CONTAINER_LOCAL_DIR:-$repo/.container-local}"
base_image="${CONTAINER_BASE_IMAGE:-localhost/keystone-auth-proxy-base:local}"
image="${CONTAINER_IMAGE:-localhost/keystone-auth-proxy:local}"
suite="${CONTAINER_DEBIAN_SUITE:-bookworm}"
socket="$dir/podman.sock"
packages=(podman buildah runc catatonit mmdebstrap uidmap fuse-overlayfs)
export CONTAINERS_CONF="$here/containers.conf"

log() { printf 'container-local: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "apt-get not found: install ${missing[*]} yourself"; exit 1; }
  log "installing ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

image_exists() { podman image exists "$1"; }

# The CI-only base: the public node:22-slim cannot be pulled here. It carries the host's node binary (Debian 12's
# own nodejs is 18, below the project's engines) and the host's CA bundle, which npm needs behind the
# TLS-inspecting egress; neither belongs in the published Dockerfile.
build_base() {
  if image_exists "$base_image"; then log "base $base_image exists"; return 0; fi
  local node_bin npm_dir ctx
  node_bin="$(readlink -f "$(command -v node)")"
  npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  [ -f "$npm_dir/package.json" ] || { log "npm not found beside $node_bin (looked in $npm_dir)"; exit 1; }
  ctx="$dir/base"
  rm -rf "$ctx" && mkdir -p "$ctx"
  if ! image_exists localhost/debian-min:"$suite"; then
    log "mmdebstrap $suite (minbase)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates "$suite" "$ctx/rootfs.tar"
    podman import "$ctx/rootfs.tar" localhost/debian-min:"$suite" >/dev/null
    rm -f "$ctx/rootfs.tar"
  fi
  cp "$node_bin" "$ctx/node"
  cp -a "$npm_dir" "$ctx/npm"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
  cat >"$ctx/Containerfile" <<EOF
FROM localhost/debian-min:$suite
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \\
 && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/host-ca.crt
CMD ["node"]
EOF
  log "building $base_image (node $("$node_bin" --version))"
  podman build --quiet --network host -t "$base_image" "$ctx" >/dev/null
  rm -rf "$ctx"
}

image_size() { podman image inspect --format '{{.Size}}' "$image"; }

build_image() {
  image_exists "$base_image" || build_base
  local start end previous
  previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  start=$(date +%s)
  # --format docker: the OCI format has no HEALTHCHECK, podman would drop it.
  podman build --format docker --network host --build-arg BASE_IMAGE="$base_image" -t "$image" "$repo" >&2
  end=$(date +%s)
  # The image this build replaced, now untagged: repeated builds would otherwise pile up 300 MB each.
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  log "built $image in $((end - start)) s, $(image_size) bytes"
}

print_env() {
  cat <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export CONTAINER_IMAGE=$image
export CONTAINER_BASE_IMAGE=$base_image
export DOCKER_HOST=unix://$socket
export TESTCONTAINERS_RYUK_DISABLED=true
EOF
}

service_up() { [ -S "$socket" ] && curl -fsS -m 2 --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; }

start_service() {
  if service_up; then log "service already at unix://$socket"; return 0; fi
  mkdir -p "$dir"
  rm -f "$socket"
  # --time=0: no idle timeout, the service runs until `stop`.
  setsid podman system service --time=0 "unix://$socket" >"$dir/service.log" 2>&1 </dev/null &
  echo $! >"$dir/service.pid"
  for _ in $(seq 1 50); do service_up && { log "service at unix://$socket"; return 0; }; sleep 0.2; done
  log "podman system service did not answer; see $dir/service.log"; exit 1
}

stop_service() {
  if [ -f "$dir/service.pid" ]; then
    kill "$(cat "$dir/service.pid")" 2>/dev/null || true
    rm -f "$dir/service.pid" "$socket"
  fi
}

case "${1:-}" in
  install) install_packages ;;
  base) install_packages; build_base ;;
  build) build_image ;;
  env) print_env ;;
  service) start_service ;;
  stop) stop_service ;;
  size) image_size ;;
  reset)
    stop_service
    podman rmi -f "$image" "$base_image" >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
