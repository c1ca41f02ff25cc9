#!/usr/bin/env bash
# Install the system packages the pgpush test suite needs (run as root; idempotent).
#   - openssh-server      real sshd used as the SFTP backup host
#   - postgresql-15       server binaries in /usr/lib/postgresql/15/bin (includes pgbench)
#   - postgresql-contrib  contrib modules (pgbench lives in postgresql-15 on Debian 12)
#   - pgbackrest          reference implementation for compatibility tests
#   - debootstrap         builds the Debian 11/13 roots the zipapp is tested in (tests/harness/debroot.py)
#   - qemu-user-static, binfmt-support
#                         run an arm64 Debian root's binaries; binfmt_misc is mounted and the
#                         qemu-aarch64 format enabled (fix-binary flag: it works inside a chroot)
# Fast path: when everything is present it only checks dpkg and /run/sshd (< 1 s).
set -euo pipefail

PACKAGES=(openssh-server postgresql-15 postgresql-contrib pgbackrest debootstrap qemu-user-static binfmt-support)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-system: must run as root" >&2
    exit 1
fi

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
# A half-removed openssh-server can leave the package "installed" without the binary.
if [[ ! -x /usr/sbin/sshd ]] && [[ ! " ${missing[*]} " == *" openssh-server "* ]]; then
    missing+=(openssh-server)
fi

did=()
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: do not let the packages start their services (no init system here).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    cleanup_policy() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    if [[ " ${missing[*]} " == *" openssh-server "* ]] && is_installed openssh-server; then
        apt-get install -y -qq --reinstall openssh-server >/dev/null
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    did+=("installed: ${missing[*]}")
fi

if [[ ! -d /run/sshd ]]; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    did+=("created /run/sshd")
fi

# arm64 roots (tests/integration/test_debian_releases.py): best effort; when this machine does
# not allow binfmt_misc, that test skips and says why.
binfmt=/proc/sys/fs/binfmt_misc
if [[ -x /usr/sbin/update-binfmts ]]; then
    if [[ ! -e $binfmt/register ]] && mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null; then
        did+=("mounted binfmt_misc")
    fi
    if [[ -e $binfmt/register ]] && [[ ! -e $binfmt/qemu-aarch64 ]] \
        && update-binfmts --enable qemu-aarch64 2>/dev/null; then
        did+=("enabled binfmt qemu-aarch64")
    fi
fi

if ((${#did[@]})); then
    echo "setup-system: $(IFS=';'; echo "${did[*]}")"
else
    echo "setup-system: nothing to do"
fi
