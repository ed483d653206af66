#!/usr/bin/env bash
# releasegate sandbox VPS: the namespace side of deploy/sandbox/namespaces.py (not run by hand).
#
#   pid1.sh launch   host side; namespaces.py starts it in a new session.
#       Joins the sandbox's own cgroup, then re-executes this script as "init" inside new
#       pid/mount/uts/ipc/cgroup namespaces, within the sandbox's prepared network namespace.
#   pid1.sh init     PID 1 of the new pid namespace.
#       Builds a throwaway copy of the host's own OS (overlayfs: lower = the host's / read-only,
#       upper = tmpfs), customises it into a small "VPS", pivots into it and execs systemd.
#
# Everything this script mounts lives in the private mount namespace and every write lands in
# the tmpfs, so the host's filesystem and mount table are never changed. All parameters come
# from RG_* environment variables that namespaces.py has already validated (safe characters only).
set -euo pipefail

stage_launch() {
  : "${RG_CGROUP:?}" "${RG_NETNS:?}"
  # Join the cgroup *before* `unshare --cgroup`: the sandbox's cgroup namespace is rooted at
  # the current cgroup, so the inner systemd then manages only this subtree, and namespaces.py
  # finds every sandbox process (and nothing else) by reading it.
  echo $$ >"$RG_CGROUP/cgroup.procs"
  # nsenter joins the prepared netns. (`unshare --net=PATH` would not join it: it creates a
  # new, empty netns and bind-mounts that over PATH.)
  exec nsenter --net="/run/netns/$RG_NETNS" \
    unshare --pid --fork --mount --uts --ipc --cgroup --propagation private --mount-proc \
    bash "$0" init
}

# Host services that may be installed/enabled on the host but must not run in the sandbox
# (network managers would reconfigure eth0, gettys want a tty, timers do maintenance work).
# Enablement links from the host are dropped anyway (see customise); masking also stops units
# that are pulled in statically or by generators.
MASK_UNITS=(
  apache2.service mysql.service mariadb.service
  redis-server.service docker.service containerd.service cron.service anacron.service
  atd.service unattended-upgrades.service e2scrub_reap.service systemd-pstore.service
  systemd-timesyncd.service systemd-networkd.service systemd-networkd-wait-online.service
  systemd-resolved.service NetworkManager.service networking.service ifupdown-pre.service
  cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service
  getty.target getty@.service serial-getty@.service console-getty.service
  container-getty@.service
  # Units that would change kernel-wide state shared with the host (the sandbox is not a VM):
  # binfmt handlers, module loading, and mounts of the host kernel's debug filesystems.
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
  systemd-modules-load.service sys-kernel-debug.mount sys-kernel-tracing.mount
  sys-kernel-config.mount sys-fs-fuse-connections.mount
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer
  logrotate.timer dpkg-db-backup.timer apt-daily.service apt-daily-upgrade.service
)

customise() {
  local R=$1 u=$RG_USER sd=$1/etc/systemd home d unit name path nginx_user=

  # Identity. A fresh machine-id matters: with the host's id journald would append to the
  # host's own journal files and copy them (possibly hundreds of MB) into the tmpfs.
  echo "$RG_NAME" >"$R/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n%s\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$RG_NAME" "$RG_ADDRESS" "$RG_NAME" >"$R/etc/hosts"
  echo "$RG_MACHINE_ID" >"$R/etc/machine-id"
  # The host's disks/swap/crypt devices mean nothing here.
  echo "# releasegate sandbox: no filesystems to mount" >"$R/etc/fstab"
  if [ -e "$R/etc/crypttab" ]; then : >"$R/etc/crypttab"; fi
  # Do not carry the private keys of releasegate's sandboxes (client and host) into the copy.
  rm -f "$R$RG_STATE_ROOT"/*/id_ed25519 "$R$RG_STATE_ROOT"/*/ssh_host_ed25519_key

  # systemd: a blank host with sshd. Drop every enablement link the host made
  # (`systemctl enable ...`), keep the distribution's static ones, then enable ssh.
  for d in "$sd/system" "$sd/user"; do
    [ -d "$d" ] || continue
    find "$d" -mindepth 2 -maxdepth 2 -type l \
      \( -path '*.wants/*' -o -path '*.requires/*' -o -path '*.upholds/*' \) -delete
  done
  for unit in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$sd/system/$unit"; done
  # Use the vendor ssh unit even if the host masked or overrode it.
  rm -rf "$sd/system/ssh.service" "$sd/system/ssh.service.d" "$sd/system/ssh.socket" \
    "$sd/system/sshd.service"
  mkdir -p "$sd/system/multi-user.target.wants"
  ln -sfn /lib/systemd/system/ssh.service "$sd/system/multi-user.target.wants/ssh.service"
  ln -sfn /lib/systemd/system/ssh.service "$sd/system/sshd.service"
  ln -sfn /lib/systemd/system/multi-user.target "$sd/system/default.target"
  # nginx, when this machine has it (scripts/setup.sh installs it; it never runs on the host
  # itself): the front door of blue/green deploys, started at boot like on a VPS prepared as
  # docs/blue-green.md says - vendor unit, Debian's placeholder site removed (it would take
  # port 80 as default_server), the deploy user in `adm` to read the access logs.
  if [ -x "$R/usr/sbin/nginx" ] && [ -e "$R/lib/systemd/system/nginx.service" ]; then
    rm -rf "$sd/system/nginx.service" "$sd/system/nginx.service.d"
    ln -sfn /lib/systemd/system/nginx.service "$sd/system/multi-user.target.wants/nginx.service"
    rm -f "$R/etc/nginx/sites-enabled/default"
    nginx_user=1
  fi
  # PostgreSQL, when this machine has it (scripts/setup.sh installs it; it never runs on the
  # host itself): the sample app's real database. Debian's postgresql.service pulls in every
  # cluster whose start.conf says auto (its generator); the data lives in the tmpfs like
  # everything else, so each boot starts from the host's freshly created cluster.
  if [ -e "$R/lib/systemd/system/postgresql.service" ] && [ -d "$R/etc/postgresql" ]; then
    rm -rf "$sd/system/postgresql.service" "$sd/system/postgresql.service.d"
    ln -sfn /lib/systemd/system/postgresql.service \
      "$sd/system/multi-user.target.wants/postgresql.service"
  fi
  # Persistent journal (in the tmpfs) so journald splits per-user files and `journalctl --user`
  # works for the deploy user; volatile storage would keep a single root-only file.
  mkdir -p "$sd/journald.conf.d"
  printf '[Journal]\nStorage=persistent\nSystemMaxUse=64M\n' \
    >"$sd/journald.conf.d/releasegate-sandbox.conf"

  # sshd: only the sandbox's own host key (the host's private keys are removed from the copy,
  # so the sandbox can never present them) and a config of our own, so that customisations of
  # the host's sshd_config (Port, AllowUsers, ...) cannot leak in.
  rm -f "$R"/etc/ssh/ssh_host_*
  install -m 0600 "$RG_HOST_KEY" "$R/etc/ssh/ssh_host_ed25519_key"
  install -m 0644 "$RG_HOST_KEY.pub" "$R/etc/ssh/ssh_host_ed25519_key.pub"
  cat >"$R/etc/ssh/sshd_config" <<'EOF'
# Written by releasegate's sandbox (deploy/sandbox/pid1.sh) for this throwaway host.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
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
EOF
  echo "SSHD_OPTS=" >"$R/etc/default/ssh"

  # The deploy user: key login, bash, lingering user manager (`systemctl --user` without an
  # open session), sudo for the example's system unit, and /srv where deploy roots live.
  if ! chroot "$R" getent passwd "$u" >/dev/null; then
    chroot "$R" useradd --create-home --shell /bin/bash "$u"
  else
    chroot "$R" usermod --shell /bin/bash "$u"
  fi
  home=$(chroot "$R" getent passwd "$u" | cut -d: -f6)
  mkdir -p "$R$home/.ssh" "$R/root/.ssh"
  install -m 0600 "$RG_CLIENT_PUBKEY" "$R$home/.ssh/authorized_keys"
  install -m 0600 "$RG_CLIENT_PUBKEY" "$R/root/.ssh/authorized_keys"
  chmod 0700 "$R$home/.ssh" "$R/root/.ssh"
  chroot "$R" chown "$u:" "$home" "$home/.ssh" "$home/.ssh/authorized_keys"
  if [ -n "${nginx_user:-}" ]; then chroot "$R" usermod -aG adm "$u"; fi
  mkdir -p "$R/var/lib/systemd/linger"
  touch "$R/var/lib/systemd/linger/$u"
  # sudo: exactly the allowlists of the systemd example inventory and of nginx (rendered by
  # namespaces.py);
  # a broken sudoers file would disable sudo altogether, so check it before booting.
  printf '%s' "$RG_SUDOERS" >"$R/etc/sudoers.d/releasegate-sandbox"
  chmod 0440 "$R/etc/sudoers.d/releasegate-sandbox"
  chroot "$R" visudo -cq -f /etc/sudoers.d/releasegate-sandbox
  mkdir -p "$R/srv"
  chroot "$R" chown "$u:" /srv

  # Tools that the host has outside sshd's default PATH get a link in /usr/local/bin.
  while read -r name path; do
    [ -n "$name" ] || continue
    ln -sfn "$path" "$R/usr/local/bin/$name"
  done <<<"${RG_TOOL_LINKS:-}"
}

api_mounts() {
  local R=$1 n
  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  # Kernel-wide sysctls are the host's: read-only, as systemd-nspawn does. net.* belongs to
  # the sandbox's own network namespace and stays writable.
  mount --bind "$R/proc/sys" "$R/proc/sys"
  mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
  mount -o remount,bind,ro "$R/proc/sys"
  if [ -e "$R/proc/sysrq-trigger" ]; then # absent on kernels without CONFIG_MAGIC_SYSRQ
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
  fi
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"           # this netns' devices only
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup" # cgroup ns: our subtree
  mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs "$R/dev"
  for n in null zero full random urandom tty; do
    touch "$R/dev/$n"
    mount --bind "/dev/$n" "$R/dev/$n"
  done
  mkdir "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  ln -s /proc/self/fd "$R/dev/fd"
  ln -s /proc/self/fd/0 "$R/dev/stdin"
  ln -s /proc/self/fd/1 "$R/dev/stdout"
  ln -s /proc/self/fd/2 "$R/dev/stderr"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
}

stage_init() {
  : "${RG_NAME:?}" "${RG_USER:?}" "${RG_ADDRESS:?}" "${RG_MNT:?}" "${RG_STATE_ROOT:?}"
  : "${RG_HOST_KEY:?}" "${RG_CLIENT_PUBKEY:?}" "${RG_MACHINE_ID:?}" "${RG_SUDOERS:?}"
  local O=$RG_MNT R=$RG_MNT/root m i=0 go=
  # Wait until namespaces.py has moved our launcher out of this cgroup (see _release_init in
  # namespaces.py); EOF instead of "go" means namespaces.py gave up, so do not boot.
  read -r -t 60 go || true
  if [ "$go" != go ]; then
    echo "releasegate sandbox $RG_NAME: no go from namespaces.py, not booting" >&2
    exit 1
  fi
  exec </dev/null
  echo "releasegate sandbox $RG_NAME: building root in $O"
  mount --make-rprivate /
  mount -t tmpfs -o mode=0755,size=2g rg-sandbox "$O"
  mkdir "$O/upper" "$O/work" "$R"
  mount -t overlay rg-sandbox -o "lowerdir=/,upperdir=$O/upper,workdir=$O/work" "$R"
  # overlayfs does not descend into mounts below its lower dir: give each separate host
  # filesystem (e.g. /home or /var on their own partition) an overlay of its own.
  while read -r m; do
    [ -n "$m" ] || continue
    i=$((i + 1))
    mkdir "$O/upper$i" "$O/work$i"
    mount -t overlay rg-sandbox -o "lowerdir=$m,upperdir=$O/upper$i,workdir=$O/work$i" "$R$m"
  done <<<"${RG_SUBMOUNTS:-}"

  customise "$R"
  api_mounts "$R"
  hostname "$RG_NAME"
  # Services get systemd's usual 1024:524288 open-files limits only if PID 1 may raise them;
  # the caller's hard limit may be lower (this is a no-op where the kernel refuses).
  ulimit -n 524288 2>/dev/null || true

  # Become the new root. pivot_root(".", ".") stacks the old root on top of the new one;
  # the lazy unmount then drops the whole host tree from this mount namespace.
  cd "$R"
  pivot_root . .
  umount -l .
  cd /
  echo "releasegate sandbox $RG_NAME: starting systemd"
  exec env -i container=releasegate-sandbox TERM=dumb /lib/systemd/systemd
}

case "${1:-}" in
  launch) stage_launch ;;
  init) stage_init ;;
  *)
    echo "usage: $0 launch|init (started by deploy/sandbox/namespaces.py)" >&2
    exit 2
    ;;
esac
