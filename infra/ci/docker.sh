#!/usr/bin/env bash
# Docker for the docker e2e tier (tests/e2e/test_docker_sites.py), idempotently: Debian's
# engine and compose tool, debootstrap for the base image, and a running daemon
# (`dockerd --storage-driver=overlay2 --iptables=false`, as DESIGN §9 says).  Images are
# built by the tests themselves (`userctl docker build`, cached by content).
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup dockerd --storage-driver=overlay2 --iptables=false >/var/log/user-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "ci: dockerd did not start; see /var/log/user-dockerd.log" >&2; exit 1; }
fi
echo "ci: docker $(docker info --format '{{.ServerVersion}}') ($(docker info --format '{{.Driver}}'))"
