"""Checks that need a fresh interpreter (a subprocess of this Python): what the relay's process
loads, and dnspython's process-wide class cache after a hostile record."""

from __future__ import annotations


def test_the_relay_loads_neither_tls_nor_a_second_openssl() -> None:
    """`ntm rs run` keeps its resident memory small (docs/dataplane.md: <= 64 MiB with 10,000 paths):
    Python's ssl (TLS) and hashlib's libcrypto (beside the OpenSSL in `cryptography`) would each add
    about 4-6 MiB. This regressed once unnoticed (hashlib came in with a faster HMAC)."""
    import subprocess
    import sys

    code = ("from ntmobile.runtime.lean import without_tls; without_tls()\n"
            "import sys, ntmobile.cli.main, ntmobile.runtime.rs\n"
            "print(sorted(m for m in ('ssl', '_ssl', 'hashlib', '_hashlib') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_hostile_dns_record_of_class_any_cannot_break_later_answers() -> None:
    """A message carrying an (ANY, A) record once made dnspython cache its generic class for (IN, A)
    too, after which every A answer of the node's stub failed. The DNS-parsing runtime modules load the IN classes first
    (fresh interpreter, so the process-wide cache starts empty)."""
    import struct
    import subprocess
    import sys

    hostile = (struct.pack("!HHHHHH", 1, 0, 0, 1, 0, 0) + b"\x01x\x00" + struct.pack("!HHIH", 1, 255, 0, 4)
               + b"\x01\x02\x03\x04")
    code = ("import ntmobile.runtime.stub, dns.message, dns.rrset\n"
            f"dns.message.from_wire({hostile!r})\n"
            "print(dns.rrset.from_text('www.gn.example.', 60, 'IN', 'A', '100.127.0.1').to_text())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "www.gn.example. 60 IN A 100.127.0.1"
