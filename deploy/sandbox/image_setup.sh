#!/usr/bin/env bash
# releasegate sandbox VPS, docker provider: turns a Debian 12 image into the sandbox VPS at
# build time (deploy/sandbox/image.py runs it in the Dockerfile; not meant to be run by hand).
# The same host as the namespaces provider's pid1.sh makes: systemd with sshd and nginx, the
# deploy user with a lingering user manager, the narrow sudo allowlist, /srv for deploy roots.
# Keys are not baked in: the provider copies the host key and the client's public key into
# each container before it starts.
set -euo pipefail
u=$(cat /tmp/rg/user)
sd=/etc/systemd

# Node/npm/PM2 copied from the building machine land in /usr/local (bin/node, lib/node_modules).
if [ -d /usr/local/lib/node_modules/npm ] && [ ! -e /usr/local/bin/npm ]; then
  ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
  ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
fi
if [ -d /usr/local/lib/node_modules/pm2 ] && [ ! -e /usr/local/bin/pm2 ]; then
  ln -s ../lib/node_modules/pm2/bin/pm2 /usr/local/bin/pm2
fi

# Units that have no business in a container (gettys want a tty, network managers would
# reconfigure eth0, timers do maintenance work, some touch kernel-wide state).
for unit in \
  getty.target getty@.service serial-getty@.service console-getty.service container-getty@.service \
  systemd-timesyncd.service systemd-networkd.service systemd-networkd-wait-online.service \
  systemd-resolved.service networking.service ifupdown-pre.service cron.service \
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
  systemd-modules-load.service sys-kernel-debug.mount sys-kernel-tracing.mount \
  sys-kernel-config.mount sys-fs-fuse-connections.mount systemd-remount-fs.service \
  systemd-pstore.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer man-db.timer logrotate.timer dpkg-db-backup.timer; do
  ln -sfn /dev/null "$sd/system/$unit"
done
mkdir -p "$sd/system/multi-user.target.wants"
ln -sfn /lib/systemd/system/ssh.service "$sd/system/multi-user.target.wants/ssh.service"
ln -sfn /lib/systemd/system/ssh.service "$sd/system/sshd.service"
ln -sfn /lib/systemd/system/multi-user.target "$sd/system/default.target"
# nginx: blue/green's front door, started at boot with Debian's placeholder site removed.
ln -sfn /lib/systemd/system/nginx.service "$sd/system/multi-user.target.wants/nginx.service"
rm -f /etc/nginx/sites-enabled/default
# PostgreSQL: the sample app's database, the cluster the package created, started at boot.
ln -sfn /lib/systemd/system/postgresql.service "$sd/system/multi-user.target.wants/postgresql.service"
mkdir -p "$sd/journald.conf.d"
printf '[Journal]\nStorage=persistent\nSystemMaxUse=64M\n' >"$sd/journald.conf.d/releasegate-sandbox.conf"
# Each container gets a fresh machine-id from systemd at boot.
: >/etc/machine-id

# sshd: the provider puts the sandbox's own host key and the authorized keys in place before
# the container starts; the package's generated host keys are not used.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/ssh/authorized_keys
cat >/etc/ssh/sshd_config <<'CONF'
# Written by releasegate's sandbox (deploy/sandbox/image_setup.sh) for this throwaway host.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# PAM: pam_systemd gives SSH sessions XDG_RUNTIME_DIR, which `systemctl --user` needs.
UsePAM yes
UseDNS no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
# Tests and parallel deploys open many connections at once.
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
CONF

useradd --create-home --shell /bin/bash "$u"
usermod -aG adm "$u" # reads nginx's logs
mkdir -p /var/lib/systemd/linger
touch "/var/lib/systemd/linger/$u"
install -m 0440 /tmp/rg/sudoers /etc/sudoers.d/releasegate-sandbox
visudo -cq -f /etc/sudoers.d/releasegate-sandbox
mkdir -p /srv
chown "$u:" /srv
