#!/bin/sh
# What goes into every service image, whatever its base (Dockerfile stage runtime-base): the CA
# bundle (TLS to Redis and the venue), curl (the compose healthchecks) and the unprivileged user
# `quantum`. On a base that has them already (the offline base made by scripts/compose-test.sh)
# nothing is downloaded.
set -eu
if ! command -v curl >/dev/null 2>&1 || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then
  apt-get update
  apt-get install -y --no-install-recommends ca-certificates curl
  rm -rf /var/lib/apt/lists/*
fi
id quantum >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin quantum
