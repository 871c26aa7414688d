"""Unmodified application servers for the general node: iperf3, busybox httpd, vsftpd, sshd, tftpd-hpa.

Each `*_service` returns (argv, files to write, TCP ports to wait for). Also the big file and keys.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .nft import FTP_PASV_PORTS

BIG_FILE_NAME = "big.bin"
BIG_FILE_SIZE = 32 << 20
_BIG_SEED = b"ntmobile lab big.bin v1"

ServiceLaunch = tuple[list[str], dict[Path, str], tuple[int, ...]]


def write_big_file(path: Path, size: int = BIG_FILE_SIZE) -> str:
    """Write `size` deterministic pseudo-random bytes (SHAKE-128 of a fixed seed); return the sha256."""
    data = hashlib.shake_128(_BIG_SEED).digest(size)
    path.write_bytes(data)
    path.chmod(0o644)
    return hashlib.sha256(data).hexdigest()


def _keypair() -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    return priv, pub


def write_keypair(path: Path, comment: str) -> str:
    """Write an ed25519 private key (OpenSSH format, 0600) and PATH.pub; return the public line."""
    priv, pub = _keypair()
    path.touch(mode=0o600)
    path.write_bytes(priv)
    line = f"{pub} {comment}\n"
    path.with_name(path.name + ".pub").write_text(line)
    return line


def ssh_client_config(client_key: Path) -> str:
    """/etc/ssh/ssh_config inside every lab host: the lab key, no host-key prompts or files."""
    return "\n".join([
        "Host *",
        f"  IdentityFile {client_key}",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  GlobalKnownHostsFile /dev/null",
        "  LogLevel ERROR",
        "  BatchMode yes",
    ]) + "\n"


def iperf3_service(workdir: Path) -> ServiceLaunch:
    return ["iperf3", "-s", "-p", "5201"], {}, (5201,)


def http_service(workdir: Path, docroot: Path) -> ServiceLaunch:
    return ["busybox", "httpd", "-f", "-p", "80", "-h", str(docroot)], {}, (80,)


def ftp_service(workdir: Path, docroot: Path) -> ServiceLaunch:
    empty = workdir / "vsftpd-empty"
    empty.mkdir(mode=0o755, exist_ok=True)
    conf = workdir / "vsftpd.conf"
    text = "\n".join([
        "listen=NO",
        "listen_ipv6=YES",
        "background=NO",
        "anonymous_enable=YES",
        "local_enable=NO",
        "write_enable=NO",
        f"anon_root={docroot}",
        "no_anon_password=YES",
        "anon_world_readable_only=YES",
        "pasv_enable=YES",
        f"pasv_min_port={FTP_PASV_PORTS[0]}",
        f"pasv_max_port={FTP_PASV_PORTS[1]}",
        "port_enable=YES",
        "connect_from_port_20=YES",
        "ftp_username=ftp",
        f"secure_chroot_dir={empty}",
        "seccomp_sandbox=NO",
        "isolate=NO",
        "isolate_network=NO",
        "xferlog_enable=YES",
        f"vsftpd_log_file={workdir / 'vsftpd.log'}",
        "hide_ids=YES",
        "ftpd_banner=ntmobile lab GN",
    ]) + "\n"
    return ["vsftpd", str(conf)], {conf: text}, (21,)


SMALL_FILE_NAME = "small.bin"
SMALL_FILE_SIZE = 256 * 1024


def tftp_service(workdir: Path, docroot: Path) -> ServiceLaunch:
    """tftpd-hpa (read-only, IPv4 and IPv6 on port 69) serving `small.bin` from the docroot."""
    small = docroot / SMALL_FILE_NAME
    if not small.exists():
        small.write_bytes(os.urandom(SMALL_FILE_SIZE))
        small.chmod(0o644)
    return ["in.tftpd", "--foreground", "--listen", "--address", ":69", "--secure", "--user", "root",
            str(docroot)], {}, ()


def ssh_service(workdir: Path, authorized_key: str) -> ServiceLaunch:
    hostkey = workdir / "ssh_host_ed25519_key"
    if not hostkey.exists():
        write_keypair(hostkey, "ntm-lab-gn")
    conf = workdir / "sshd_config"
    auth = workdir / "authorized_keys"
    text = "\n".join([
        "Port 22",
        "ListenAddress 0.0.0.0",
        "ListenAddress ::",
        f"HostKey {hostkey}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {auth}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
    ]) + "\n"
    # sshd insists on its privilege-separation directory (Debian: /run/sshd, root, 0755). It is the
    # system's standard directory, shared by all labs, so it is created if missing and never removed.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], {conf: text, auth: authorized_key}, (22,)
