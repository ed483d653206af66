#!/usr/bin/env bash
# Set up releasegate on a fresh Debian 12 machine, as root: the host tools the sandbox VPS
# needs (sshd, systemd, iproute2, Node, PM2, nginx, PostgreSQL; the Docker engine and debootstrap
# for its docker provider), then releasegate itself in .venv. The Docker engine is started if it
# is not running.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "scripts/setup.sh: run as root (the sandbox VPS uses Linux namespaces)" >&2
  exit 2
fi

packages=()
want() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || packages+=("$2"); }
want /usr/sbin/sshd openssh-server
want ssh openssh-client
want ssh-keygen openssh-client
want sudo sudo
want ip iproute2
want unshare util-linux
want nsenter util-linux
want /lib/systemd/systemd systemd
want git git
want node nodejs
want pgrep procps
want tar tar
want gzip gzip
want curl curl
# nginx is the blue/green front door (docs/blue-green.md). The sandbox VPS boots this machine's
# OS files and runs it under its own systemd; on this machine itself it must not run.
want /usr/sbin/nginx nginx
# PostgreSQL is the sample app's real database (docs/design.md, "Migrations"): the same rule,
# the sandbox's systemd runs the cluster the package creates; this machine never runs it.
want /usr/lib/postgresql/15/bin/postgres postgresql
want psql postgresql-client
# The Docker engine, for the docker sandbox provider (docs/sandbox.md), and debootstrap, which
# builds its image's Debian base where no image registry is reachable.
want dockerd docker.io
want debootstrap debootstrap
if ! command -v npm >/dev/null 2>&1; then packages+=(npm); fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then packages+=(python3-venv python3-pip); fi
if [ ${#packages[@]} -gt 0 ]; then
  mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
  echo "setup: apt-get install ${packages[*]}"
  # No service may start during the install (this machine's PID 1 is not systemd, and an
  # nginx started here would take port 80): policy-rc.d says "no" to every invoke-rc.d start.
  # A policy already in place (container images ship one) is left as it is.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# releasegate scripts/setup.sh: no service starts during this install\nexit 101\n' \
      >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  nginx_before=$(pgrep -x nginx || true)
  postgres_before=$(pgrep -x postgres || true)
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  if [ -z "$nginx_before" ] && pgrep -x nginx >/dev/null; then
    echo "setup: stopping the nginx the package started on this machine"
    /usr/sbin/nginx -s quit || echo "setup: warning: nginx runs on this machine; stop it" >&2
  fi
  if [ -z "$postgres_before" ] && pgrep -x postgres >/dev/null; then
    echo "setup: stopping the PostgreSQL the package started on this machine"
    pg_ctlcluster 15 main stop || echo "setup: warning: postgres runs on this machine" >&2
  fi
fi
# The cluster the sandbox starts (the package makes one; a machine where it was dropped gets
# it back). Created stopped.
if [ -x /usr/lib/postgresql/15/bin/postgres ] && ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  echo "setup: pg_createcluster 15 main"
  pg_createcluster 15 main >/dev/null
fi

if ! command -v pm2 >/dev/null 2>&1; then
  echo "setup: npm install -g pm2@7.0.4"
  npm install -g --no-audit --no-fund --loglevel=error pm2@7.0.4 >/dev/null
fi

# The Docker engine must run for the docker sandbox provider: as a service where systemd is
# PID 1, else as a daemon of its own with a pid file (this kind of machine has no init system).
docker_answers() { curl -fsS --max-time 2 --unix-socket /var/run/docker.sock http://docker/_ping >/dev/null 2>&1; }
if ! docker_answers; then
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    echo "setup: systemctl start docker"
    systemctl start docker
  elif ! { [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    echo "setup: starting dockerd (pid file /var/run/docker.pid, log /var/log/dockerd.log)"
    setsid dockerd --pidfile /var/run/docker.pid </dev/null >>/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 120); do docker_answers && break; sleep 0.25; done
  if ! docker_answers; then
    echo "setup: the Docker engine did not answer within 30 s; see /var/log/dockerd.log" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
echo "setup: ready (.venv/bin/releasegate, .venv/bin/invoke, .venv/bin/python -m pytest)"
