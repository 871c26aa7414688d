"""Enrolment: the DC operator issues a node's or relay's credentials (`ntm dc enroll`)."""

from __future__ import annotations

import base64
import os

from ntmobile.core.registry import ClientRecord, Pools
from ntmobile.wire import Role

from .config import Credentials, DcSettings, replica_endpoint
from .store import open_store


def enroll(settings: DcSettings, name: str, role: Role, *, client_id: bytes | None = None) -> Credentials:
    """Create a client in the DC's registry and return its credentials. StoreError on conflict."""
    name = name.rstrip(".").lower()
    if role is Role.NODE and not any(name == d or name.endswith("." + d) for d in settings.domains):
        name = f"{name}.{settings.domain}"
    p = settings.pools
    store = open_store(settings.database, Pools(p.vip4, p.vip6, p.gn_vip4, p.gn_vip6))
    try:
        dc_id, _ = store.identity()
        while client_id is None:
            candidate = os.urandom(8)
            if candidate != dc_id and store.get_client(candidate) is None:
                client_id = candidate
        psk = os.urandom(32)
        store.add_client(ClientRecord(client_id, name, role, psk))
        if role is Role.NODE:
            store.assign_vips(client_id)
    finally:
        store.close()
    return Credentials(name=name, role="node" if role is Role.NODE else "relay", client_id=client_id.hex(),
                       secret=base64.b64encode(psk).decode(), dc_id=dc_id.hex(), dc_address=settings.address,
                       dc_port=settings.port, domain=settings.domain,
                       dc_replicas=[replica_endpoint(r.address, r.port) for r in settings.replicas])

