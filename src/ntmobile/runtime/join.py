"""Joining with a token, both ends' I/O: the DC operator issues a token (``issue_token``), a new node
redeems it with its DC (``redeem``, one UDP exchange) and gets its credentials (wire/join.py,
core/join.py). Every failure is a ``JoinError`` with one line saying what happened."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from ntmobile.core.registry import JoinRecord, Pools
from ntmobile.crypto import AuthError, Ephemeral
from ntmobile.crypto.join import join_answer_key, join_mac, open_answer
from ntmobile.wire import CodecError, Status
from ntmobile.wire.join import (
    JoinCredentials,
    JoinToken,
    format_token,
    join_request_signed_part,
    join_response_head,
    pack_join_request,
    parse_credentials,
    parse_join_response,
)

from .config import Credentials, DcSettings, parse_replica, replica_endpoint
from .store import open_store

#: How long a token stays valid unless the operator says otherwise.
DEFAULT_LIFETIME = 3600


class JoinError(Exception):
    """A token could not be issued or redeemed (message: one line)."""


def issue_token(settings: DcSettings, name: str, *, lifetime: int = DEFAULT_LIFETIME,
                now: Callable[[], float] = time.time) -> tuple[str, str]:
    """Store a single-use token for node ``name`` in the DC's registry; return (full name, token text)."""
    name = name.rstrip(".").lower()
    if not any(name == d or name.endswith("." + d) for d in settings.domains):
        name = f"{name}.{settings.domain}"
    p = settings.pools
    store = open_store(settings.database, Pools(p.vip4, p.vip6, p.gn_vip4, p.gn_vip6))
    try:
        if store.client_by_name(name) is not None:
            raise JoinError(f"{name} is already enrolled")
        dc_id, _ = store.identity()
        token_id, secret = os.urandom(8), os.urandom(32)
        expires = int(now()) + lifetime
        store.add_join(JoinRecord(token_id, secret, name, expires))
    finally:
        store.close()
    return name, format_token(JoinToken(token_id, secret, expires, dc_id, settings.address, settings.port,
                                        settings.domain,
                                        tuple(replica_endpoint(r.address, r.port) for r in settings.replicas)))


def redeem(token: JoinToken, *, timeout: float = 10.0) -> JoinCredentials:
    """Send the Join Request to the token's DC (retransmitted until answered or ``timeout``)."""
    eph = Ephemeral()
    signed = join_request_signed_part(token.token_id, eph.public)
    request = pack_join_request(token.token_id, eph.public, join_mac(token.secret, token.token_id, signed))
    family = socket.AF_INET6 if ":" in token.dc_address else socket.AF_INET
    # the token's DC first, then its other replicas of the same family, in turn (the join is recorded
    # in the shared registry: a retransmission answered by another replica gets the same answer)
    ring = [(token.dc_address, token.dc_port)]
    ring += [ep for ep in (parse_replica(r) for r in token.replicas)
             if (":" in ep[0]) == (family == socket.AF_INET6) and ep not in ring]
    attempt = 0
    dest = ring[0]
    deadline = time.monotonic() + timeout
    rto = 0.25
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        while True:
            dest = ring[attempt % len(ring)]
            attempt += 1
            try:
                sock.sendto(request, dest)
            except OSError as exc:
                raise JoinError(f"cannot reach the DC at {dest[0]} port {dest[1]}: {exc.strerror}") from None
            wait_until = min(time.monotonic() + rto, deadline)
            while (left := wait_until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, src = sock.recvfrom(2048)
                except TimeoutError:
                    break
                except OSError as exc:
                    raise JoinError(f"cannot reach the DC at {dest[0]} port {dest[1]}: {exc.strerror}") from None
                answer = _answer(token, eph, data)
                if answer is not None:
                    return answer
            if time.monotonic() >= deadline:
                raise JoinError(f"the DC at {dest[0]} port {dest[1]} did not answer within {timeout:.0f} s")
            rto = min(rto * 2, 2.0)


def _answer(token: JoinToken, eph: Ephemeral, data: bytes) -> JoinCredentials | None:
    """The credentials in a Join Response, None for a datagram that is not one for us; JoinError for a refusal."""
    try:
        token_id, status, dc_eph, sealed = parse_join_response(data)
    except CodecError:
        return None
    if token_id != token.token_id:
        return None
    if status == Status.TOKEN_USED:
        raise JoinError("this token has been used already: ask the DC operator for a new one")
    if status == Status.TOKEN_EXPIRED:
        raise JoinError("this token has expired: ask the DC operator for a new one")
    if status != Status.OK:
        try:
            why = Status(status).name
        except ValueError:
            why = f"status {status}"
        raise JoinError(f"the DC refused the join ({why})")
    try:
        shared = eph.exchange(dc_eph)
        key = join_answer_key(token.secret, shared, token.token_id, eph.public, dc_eph)
        return parse_credentials(open_answer(key, join_response_head(token_id, status, dc_eph), sealed))
    except (ValueError, AuthError, CodecError):
        return None  # not from the DC (forged or corrupted): keep waiting


def credentials_of(c: JoinCredentials) -> Credentials:
    import base64

    return Credentials(name=c.name, role="node", client_id=c.client_id.hex(), secret=base64.b64encode(c.psk).decode(),
                       dc_id=c.dc_id.hex(), dc_address=c.dc_address, dc_port=c.dc_port, domain=c.domain,
                       dc_replicas=list(c.replicas))
