"""The wire codec: round trips of every message, exact layouts, attribute rules, and fuzzing.

Decoders must only ever raise ``wire.CodecError`` on bad input (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntmobile import wire
from ntmobile.crypto import Channel, KeyPair
from ntmobile.wire import CodecError, MessageType, SignalFlags, Status
from ntmobile.wire.constants import SIGNAL_TYPES, TAG_SIZE
from ntmobile.wire.frame import txid_of
from ntmobile.wire.messages import SCHEMAS
from ntmobile.wire.tlv import Attr, Kind, decode_value, encode_value, iter_attrs, pack_attr

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_CLASSES = list(wire.MESSAGE_CLASSES.values())

#: A non-default sample value per attribute kind (non-ASCII string, both address families).
SAMPLE: dict[Kind, object] = {
    Kind.U8: 0xA5,
    Kind.U16: 0xBEEF,
    Kind.U32: 0xDEADBEEF,
    Kind.U64: 0xFEDCBA9876543210,
    Kind.ID8: bytes(range(1, 9)),
    Kind.KEY32: bytes(range(100, 132)),
    Kind.STR: "nœud-1.example.jp",
    Kind.IP4: "10.200.3.4",
    Kind.IP6: "fd00:1:2::3",
    Kind.ENDPOINT: ("2001:db8::7", 7412),
    Kind.VERSIONS: (1, 3),
}
REPEATED_SAMPLE = (("192.0.2.1", 7412), ("2001:db8::1", 65535), ("0.0.0.0", 0), ("203.0.113.9", 1))

#: Every value of every kind at its extremes, for encode/decode_value round trips.
EXTREMES: dict[Kind, list[object]] = {
    Kind.U8: [0, 1, 255],
    Kind.U16: [0, 65535],
    Kind.U32: [0, 2**32 - 1],
    Kind.U64: [0, 2**64 - 1],
    Kind.ID8: [bytes(8), b"\xff" * 8],
    Kind.KEY32: [bytes(32), b"\xff" * 32],
    Kind.STR: ["", "a", "é" * 127, "x" * 255],
    Kind.IP4: ["0.0.0.0", "255.255.255.255"],
    Kind.IP6: ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:102:304"],
    Kind.ENDPOINT: [("0.0.0.0", 0), ("255.255.255.255", 65535), ("::", 0), ("fe80::1", 7410)],
    Kind.VERSIONS: [(0, 0), (1, 1), (0, 255)],
}
ENCODED_SIZE = {Kind.U8: 1, Kind.U16: 2, Kind.U32: 4, Kind.U64: 8, Kind.ID8: 8, Kind.KEY32: 32, Kind.IP4: 4,
                Kind.IP6: 16, Kind.VERSIONS: 2}


def full(cls: type[wire.Message]) -> wire.Message:
    """An instance with every field set (repeated fields with IPv4 and IPv6 endpoints)."""
    kwargs: dict[str, object] = {}
    for spec in SCHEMAS[cls]:
        kwargs[spec.name] = REPEATED_SAMPLE if spec.repeated else SAMPLE[spec.kind]
    return cls(**kwargs)


def minimal(cls: type[wire.Message]) -> wire.Message:
    """An instance with only the required fields set."""
    return cls(**{s.name: SAMPLE[s.kind] for s in SCHEMAS[cls] if s.required})


def valid_bodies() -> list[tuple[MessageType, bytes]]:
    return [(cls.TYPE, wire.encode_body(make(cls))) for cls in ALL_CLASSES for make in (full, minimal)]


def sealed_datagrams() -> list[bytes]:
    ch = Channel(KeyPair(b"\x01" * 32, b"\x02" * 32), b"S" * 8)
    out = [ch.seal(make(cls), txid=0x01020304) for cls in ALL_CLASSES for make in (full, minimal)]
    cap = wire.pack_capsule_header(wire.CapsuleFlags.FROM_RESPONDER, b"P" * 8, 7) + bytes(40)
    return [*out, cap, wire.pack_version_not_supported(99)]


VALID_BODIES = valid_bodies()
VALID_DATAGRAMS = sealed_datagrams()


# ------------------------------------------------------------------------------------------------
# Constants and schemas
# ------------------------------------------------------------------------------------------------


def test_ports_and_limits() -> None:
    assert (wire.DC_PORT, wire.RS_PORT, wire.NODE_PORT) == (7410, 7411, 7412)
    assert wire.MAX_SIGNAL_SIZE == 1200
    assert wire.SIGNAL_HEADER_SIZE == 24
    assert wire.CAPSULE_HEADER_SIZE == 20
    assert wire.CAPSULE_OVERHEAD == 36


def test_every_signalling_type_but_vns_has_a_body_schema() -> None:
    expected = {t for t in SIGNAL_TYPES if t is not MessageType.VERSION_NOT_SUPPORTED}
    assert set(wire.MESSAGE_CLASSES) == expected
    for mtype, cls in wire.MESSAGE_CLASSES.items():
        assert cls.TYPE is mtype


def test_attribute_codes_are_critical_and_unique_within_each_message() -> None:
    assert all(a < 0x80 for a in Attr)
    for cls in ALL_CLASSES:
        attrs = [s.attr for s in SCHEMAS[cls]]
        assert len(attrs) == len(set(attrs)), cls.__name__


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_with_every_field_set(cls: type[wire.Message]) -> None:
    msg = full(cls)
    body = wire.encode_body(msg)
    assert wire.decode_body(cls.TYPE, body) == msg
    # every field is on the wire: one attribute per scalar, one per repeated item
    expected = sum(len(REPEATED_SAMPLE) if s.repeated else 1 for s in SCHEMAS[cls])
    assert len(list(iter_attrs(body))) == expected


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_with_only_required_fields(cls: type[wire.Message]) -> None:
    msg = minimal(cls)
    body = wire.encode_body(msg)
    decoded = wire.decode_body(cls.TYPE, body)
    assert decoded == msg
    for spec in SCHEMAS[cls]:
        if spec.repeated:
            assert getattr(decoded, spec.name) == ()


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_absent_optional_fields_are_not_encoded(cls: type[wire.Message]) -> None:
    present = {a for a, _ in iter_attrs(wire.encode_body(minimal(cls)))}
    for spec in SCHEMAS[cls]:
        default = getattr(minimal(cls), spec.name)
        if spec.required:
            assert spec.attr in present
        elif default is None or default == ():
            assert spec.attr not in present, spec.name


def test_repeated_endpoints_keep_order_and_mix_families() -> None:
    msg = wire.RouteDirection(path_id=b"p" * 8, path_role=1, mode=2, path_key=b"k" * 32, idle_timeout=60,
                              peer_endpoints=REPEATED_SAMPLE)
    decoded = wire.decode_body(MessageType.ROUTE_DIRECTION, wire.encode_body(msg))
    assert isinstance(decoded, wire.RouteDirection)
    assert decoded.peer_endpoints == REPEATED_SAMPLE


def test_repeated_attributes_may_be_interleaved() -> None:
    lt = Attr.LOCAL_ENDPOINT
    body = b"".join([
        pack_attr(lt, encode_value(Kind.ENDPOINT, ("192.0.2.1", 1))),
        pack_attr(Attr.ROLE, b"\x01"),
        pack_attr(Attr.NAME, b"n"),
        pack_attr(lt, encode_value(Kind.ENDPOINT, ("2001:db8::1", 2))),
        pack_attr(Attr.EPHEMERAL, bytes(32)),
        pack_attr(Attr.VERSIONS, b"\x01\x01"),
    ])
    msg = wire.decode_body(MessageType.REGISTRATION_REQUEST, body)
    assert isinstance(msg, wire.RegistrationRequest)
    assert msg.local_endpoints == (("192.0.2.1", 1), ("2001:db8::1", 2))


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_value_round_trip_at_extremes(kind: Kind) -> None:
    for value in EXTREMES[kind]:
        raw = encode_value(kind, value)
        if kind in ENCODED_SIZE:
            assert len(raw) == ENCODED_SIZE[kind]
        assert decode_value(kind, raw) == value


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("make", [full, minimal], ids=["full", "minimal"])
def test_round_trip_through_channel_preserves_header(cls: type[wire.Message],
                                                     make: Callable[[type[wire.Message]], wire.Message]) -> None:
    keys = KeyPair(b"\x11" * 32, b"\x22" * 32)
    a = Channel(keys, b"sender-A", seq_start=41)
    b = Channel(keys.swapped(), b"sender-B")
    msg = make(cls)
    flags = SignalFlags.LONG_TERM | SignalFlags.FROM_RESPONDER
    data = a.seal(msg, txid=0xCAFEBABE, status=Status.PATH_ID_IN_USE, flags=flags)
    hdr = wire.parse_signal_header(data)
    assert hdr == wire.SignalHeader(1, cls.TYPE, flags, Status.PATH_ID_IN_USE, b"sender-A", 0xCAFEBABE, 41)
    assert wire.peek(data) == (1, int(cls.TYPE))
    assert txid_of(data) == 0xCAFEBABE
    assert b.open(hdr, data) == msg
    # and back the other way
    back = b.seal(msg, txid=7)
    hdr2 = wire.parse_signal_header(back)
    assert (hdr2.sender, hdr2.txid, hdr2.seq, hdr2.flags, hdr2.status) == (b"sender-B", 7, 1, 0, 0)
    assert a.open(hdr2, back) == msg


# ------------------------------------------------------------------------------------------------
# Exact layouts (docs/protocol.md is written from these)
# ------------------------------------------------------------------------------------------------


def test_signal_header_layout() -> None:
    hdr = wire.SignalHeader(1, MessageType.TUNNEL_REQUEST, 0x02, 0x09, b"ABCDEFGH", 0x01020304,
                            0x1112131415161718)
    raw = hdr.pack()
    assert raw == (b"\x01\x08\x02\x09" + b"ABCDEFGH" + b"\x01\x02\x03\x04"
                   + b"\x11\x12\x13\x14\x15\x16\x17\x18")
    assert wire.parse_signal_header(raw + bytes(TAG_SIZE)) == hdr


def test_capsule_header_layout() -> None:
    raw = wire.pack_capsule_header(0x03, b"PATHID!!", 0x0102030405060708)
    assert raw == b"\x01\x40\x03\x00PATHID!!\x01\x02\x03\x04\x05\x06\x07\x08"
    hdr = wire.parse_capsule_header(raw + bytes(TAG_SIZE))
    assert hdr == wire.CapsuleHeader(0x03, b"PATHID!!", 0x0102030405060708)


def test_attribute_layouts() -> None:
    assert wire.encode_body(wire.PathRelease(path_id=b"12345678")) == b"\x0b\x00\x0812345678"
    assert pack_attr(0x99, b"") == b"\x99\x00\x00"
    assert encode_value(Kind.ENDPOINT, ("192.0.2.1", 7412)) == b"\x04\x1c\xf4\xc0\x00\x02\x01"
    assert encode_value(Kind.ENDPOINT, ("::1", 1)) == b"\x06\x00\x01" + bytes(15) + b"\x01"
    assert encode_value(Kind.VERSIONS, (1, 2)) == b"\x01\x02"
    assert encode_value(Kind.STR, "é") == b"\xc3\xa9"
    assert encode_value(Kind.U64, 1) == bytes(7) + b"\x01"


def test_version_not_supported_layout_and_parse() -> None:
    raw = wire.pack_version_not_supported(0xA1B2C3D4)
    assert len(raw) == 26
    assert raw[:4] == b"\x01\x3f\x00\x00"
    assert raw[4:12] == bytes(8)
    assert raw[12:16] == b"\xa1\xb2\xc3\xd4"
    assert raw[16:24] == bytes(8)
    assert raw[24:] == b"\x01\x01"
    assert wire.parse_version_not_supported(raw) == (0xA1B2C3D4, (1, 1))
    # the version byte is not checked: a VNS from any version parses
    assert wire.parse_version_not_supported(b"\x07" + raw[1:]) == (0xA1B2C3D4, (1, 1))
    with pytest.raises(CodecError):
        wire.parse_version_not_supported(raw + b"\x00")
    with pytest.raises(CodecError):
        wire.parse_version_not_supported(raw[:24] + b"\x03\x02")
    with pytest.raises(CodecError):
        wire.parse_version_not_supported(raw[:1] + b"\x01" + raw[2:])


# ------------------------------------------------------------------------------------------------
# Framing rejections
# ------------------------------------------------------------------------------------------------


def test_signal_header_rejections() -> None:
    good = wire.SignalHeader(1, MessageType.KEEPALIVE, 0, 0, bytes(8), 1, 1).pack() + bytes(TAG_SIZE)
    wire.parse_signal_header(good)
    with pytest.raises(CodecError, match="too short"):
        wire.parse_signal_header(good[:-1])
    with pytest.raises(CodecError, match="version"):
        wire.parse_signal_header(b"\x02" + good[1:])
    for bad_type in (0x00, 0x15, 0x3E, 0x3F, 0x40, 0xFF):
        with pytest.raises(CodecError):
            wire.parse_signal_header(good[:1] + bytes((bad_type,)) + good[2:])


def test_capsule_header_rejections() -> None:
    good = wire.pack_capsule_header(0, bytes(8), 1) + bytes(TAG_SIZE)
    wire.parse_capsule_header(good)
    with pytest.raises(CodecError):
        wire.parse_capsule_header(good[:-1])
    with pytest.raises(CodecError):
        wire.parse_capsule_header(b"\x02" + good[1:])
    with pytest.raises(CodecError):
        wire.parse_capsule_header(good[:1] + b"\x08" + good[2:])


def test_peek_and_txid_of_short_datagrams() -> None:
    assert wire.peek(b"\x01\x40") == (1, 0x40)
    for short in (b"", b"\x01"):
        with pytest.raises(CodecError):
            wire.peek(short)
    assert txid_of(bytes(23)) is None


def test_decode_body_rejects_types_without_schema() -> None:
    for t in (MessageType.DATA, MessageType.VERSION_NOT_SUPPORTED, 0x00, 0x77):
        with pytest.raises(CodecError):
            wire.decode_body(t, b"")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Attribute rules: critical/optional unknowns, duplicates, missing required
# ------------------------------------------------------------------------------------------------


def _path_release_body(extra: bytes) -> bytes:
    return wire.encode_body(wire.PathRelease(path_id=b"12345678")) + extra


@pytest.mark.parametrize("atype", [0x00, 0x27, 0x40, 0x7F])
def test_unknown_critical_attribute_is_rejected(atype: int) -> None:
    with pytest.raises(CodecError, match="critical"):
        wire.decode_body(MessageType.PATH_RELEASE, _path_release_body(pack_attr(atype, b"x")))


def test_known_attribute_foreign_to_the_message_is_rejected() -> None:
    # FQDN (0x0A) is a known code but not part of Path Release: critical, so rejected
    with pytest.raises(CodecError):
        wire.decode_body(MessageType.PATH_RELEASE, _path_release_body(pack_attr(Attr.FQDN, b"a.b")))


@pytest.mark.parametrize("atype", [0x80, 0x81, 0xC0, 0xFF])
def test_unknown_optional_attribute_is_skipped(atype: int) -> None:
    body = pack_attr(atype, b"anything at all") + _path_release_body(pack_attr(atype, b""))
    assert wire.decode_body(MessageType.PATH_RELEASE, body) == wire.PathRelease(path_id=b"12345678")


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_duplicated_non_repeated_attribute_is_rejected(cls: type[wire.Message]) -> None:
    body = wire.encode_body(full(cls))
    attrs = list(iter_attrs(body))
    repeated = {s.attr for s in SCHEMAS[cls] if s.repeated}
    for atype, value in attrs:
        if atype in repeated:
            continue
        with pytest.raises(CodecError, match="repeated"):
            wire.decode_body(cls.TYPE, body + pack_attr(atype, value))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_missing_required_attribute_is_rejected(cls: type[wire.Message]) -> None:
    attrs = list(iter_attrs(wire.encode_body(full(cls))))
    for spec in SCHEMAS[cls]:
        if not spec.required:
            continue
        body = b"".join(pack_attr(a, v) for a, v in attrs if a != spec.attr)
        with pytest.raises(CodecError, match="required"):
            wire.decode_body(cls.TYPE, body)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_encode_rejects_a_missing_required_field(cls: type[wire.Message]) -> None:
    for spec in SCHEMAS[cls]:
        if spec.required:
            msg = dataclasses.replace(minimal(cls), **{spec.name: None})
            with pytest.raises(CodecError, match="required"):
                wire.encode_body(msg)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_wrong_value_length_is_rejected(cls: type[wire.Message]) -> None:
    attrs = list(iter_attrs(wire.encode_body(full(cls))))
    specs = {s.attr: s for s in SCHEMAS[cls]}
    for i, (atype, value) in enumerate(attrs):
        if specs[atype].kind is Kind.STR:
            continue
        for bad in (value[:-1], value + b"\x00"):
            body = b"".join(pack_attr(a, bad if j == i else v) for j, (a, v) in enumerate(attrs))
            with pytest.raises(CodecError):
                wire.decode_body(cls.TYPE, body)


def test_truncated_attributes_are_rejected() -> None:
    body = wire.encode_body(full(wire.RouteDirection))
    boundaries, off = set(), 0
    for _, value in iter_attrs(body):
        off += 3 + len(value)
        boundaries.add(off)
    for cut in range(1, len(body)):
        if cut in boundaries:
            continue  # a cut between attributes is a shorter, well-formed body
        with pytest.raises(CodecError, match="truncated|runs past"):
            list(iter_attrs(body[:cut]))
        with pytest.raises(CodecError):
            wire.decode_body(MessageType.ROUTE_DIRECTION, body[:cut])


def test_addresses_decode_in_canonical_form() -> None:
    # the codec carries addresses, not their spelling: decoding yields Python's compressed form
    raw = encode_value(Kind.ENDPOINT, ("FD00:0:0::0001", 9))
    assert decode_value(Kind.ENDPOINT, raw) == ("fd00::1", 9)
    assert decode_value(Kind.IP6, encode_value(Kind.IP6, "::ffff:1.2.3.4")) == "::ffff:102:304"


@pytest.mark.parametrize(("kind", "raw"), [
    (Kind.STR, b"\xff\xfe"),
    (Kind.STR, b"\xed\xa0\x80"),  # an encoded surrogate is not UTF-8
    (Kind.ENDPOINT, b"\x06\x00\x01" + bytes(4)),  # IPv6 family with an IPv4 length
    (Kind.ENDPOINT, b"\x04\x00\x01" + bytes(16)),
    (Kind.ENDPOINT, b"\x05\x00\x01" + bytes(4)),
    (Kind.VERSIONS, b"\x02\x01"),
])
def test_malformed_values_are_rejected(kind: Kind, raw: bytes) -> None:
    with pytest.raises(CodecError):
        decode_value(kind, raw)


# ------------------------------------------------------------------------------------------------
# Encoder validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value"), [
    (Kind.U8, 256), (Kind.U8, -1), (Kind.U8, True), (Kind.U8, 1.0), (Kind.U8, "1"),
    (Kind.U16, 65536), (Kind.U32, 2**32), (Kind.U64, 2**64), (Kind.U64, -1),
    (Kind.ID8, bytes(7)), (Kind.ID8, bytes(9)), (Kind.ID8, "12345678"),
    (Kind.KEY32, bytes(31)), (Kind.KEY32, bytes(33)), (Kind.KEY32, None),
    (Kind.STR, "x" * 256), (Kind.STR, "é" * 128), (Kind.STR, b"bytes"),
    (Kind.IP4, "::1"), (Kind.IP4, "256.0.0.1"), (Kind.IP4, 167772161), (Kind.IP6, "10.0.0.1"),
    (Kind.IP6, "fd00::g"),
    (Kind.ENDPOINT, ("10.0.0.1", 65536)), (Kind.ENDPOINT, ("10.0.0.1", -1)), (Kind.ENDPOINT, ("nope", 1)),
    (Kind.ENDPOINT, ("10.0.0.1",)), (Kind.ENDPOINT, ["10.0.0.1", 1]), (Kind.ENDPOINT, ("10.0.0.1", "1")),
    (Kind.VERSIONS, (2, 1)), (Kind.VERSIONS, (0, 256)), (Kind.VERSIONS, (1,)),
])
def test_encode_value_rejects_bad_values(kind: Kind, value: object) -> None:
    with pytest.raises(CodecError):
        encode_value(kind, value)


def test_encode_body_rejects_bad_field_values() -> None:
    base = minimal(wire.RegistrationRequest)
    for bad in ({"role": 256}, {"name": "n" * 256}, {"ephemeral": bytes(31)}, {"versions": (3, 1)},
                {"capabilities": -1}, {"load": 2**32}, {"local_endpoints": (("1.2.3.4", 70000),)},
                {"local_endpoints": ("1.2.3.4", 5)}):
        with pytest.raises(CodecError):
            wire.encode_body(dataclasses.replace(base, **bad))


# ------------------------------------------------------------------------------------------------
# Fuzzing: decoders raise CodecError and nothing else
# ------------------------------------------------------------------------------------------------


def only_codec_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except CodecError:
        pass
    except Exception as exc:  # noqa: BLE001 - any other exception type is the failure under test
        pytest.fail(f"{type(exc).__name__} escaped a decoder: {exc!r}")


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, byte) edits: 0 flip a bit, 1 set a byte, 2 insert, 3 delete, 4 truncate,
    5 duplicate a slice."""
    buf = bytearray(data)
    for op, pos, val in ops:
        i = pos % (len(buf) + 1)
        if op == 0 and buf:
            buf[i % len(buf)] ^= 1 << (val % 8)
        elif op == 1 and buf:
            buf[i % len(buf)] = val
        elif op == 2:
            buf.insert(i, val)
        elif op == 3 and buf:
            del buf[i % len(buf)]
        elif op == 4:
            del buf[i:]
        elif op == 5:
            buf[i:i] = buf[i : i + val % 24]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2000), st.integers(0, 255)), min_size=1,
                 max_size=6)
any_type = st.one_of(st.sampled_from(list(MessageType)), st.integers(0, 255))
message_type = st.sampled_from(list(wire.MESSAGE_CLASSES))

#: Bodies made of plausible attributes: known and unknown codes, lengths near the kind's size.
attribute = st.tuples(
    st.one_of(st.sampled_from([int(a) for a in Attr]), st.integers(0, 255)),
    st.one_of(st.binary(max_size=40), st.sampled_from([7, 19]).flatmap(
        lambda n: st.tuples(st.sampled_from([4, 6, 0]), st.binary(min_size=n - 1, max_size=n - 1)).map(
            lambda t: bytes((t[0],)) + t[1]))),
).map(lambda t: pack_attr(t[0], t[1]))
attribute_body = st.lists(attribute, max_size=12).map(b"".join)


def decode_all(data: bytes) -> None:
    only_codec_errors(lambda: wire.peek(data))
    only_codec_errors(lambda: wire.parse_signal_header(data))
    only_codec_errors(lambda: wire.parse_capsule_header(data))
    only_codec_errors(lambda: wire.parse_version_not_supported(data))
    only_codec_errors(lambda: list(iter_attrs(data)))
    only_codec_errors(lambda: txid_of(data))


@FUZZ
@given(st.binary(max_size=1300))
def test_fuzz_random_datagrams(data: bytes) -> None:
    decode_all(data)


@FUZZ
@given(st.sampled_from(VALID_DATAGRAMS), edits)
def test_fuzz_mutated_datagrams(data: bytes, ops: list[tuple[int, int, int]]) -> None:
    decode_all(mutate(data, ops))


@FUZZ
@given(any_type, st.binary(max_size=300))
def test_fuzz_random_bodies(mtype: int, body: bytes) -> None:
    only_codec_errors(lambda: wire.decode_body(mtype, body))  # type: ignore[arg-type]


@FUZZ
@given(st.sampled_from(VALID_BODIES), edits)
def test_fuzz_mutated_bodies(valid: tuple[MessageType, bytes], ops: list[tuple[int, int, int]]) -> None:
    mtype, body = valid
    only_codec_errors(lambda: wire.decode_body(mtype, mutate(body, ops)))


@FUZZ
@given(message_type, attribute_body)
def test_fuzz_structured_bodies(mtype: MessageType, body: bytes) -> None:
    only_codec_errors(lambda: wire.decode_body(mtype, body))


@FUZZ
@given(st.sampled_from(VALID_BODIES), st.sampled_from(VALID_BODIES))
def test_fuzz_bodies_of_the_wrong_type(a: tuple[MessageType, bytes], b: tuple[MessageType, bytes]) -> None:
    only_codec_errors(lambda: wire.decode_body(a[0], b[1]))


@FUZZ
@given(st.sampled_from(list(Kind)), st.binary(max_size=40))
def test_fuzz_decode_value_every_kind(kind: Kind, raw: bytes) -> None:
    only_codec_errors(lambda: decode_value(kind, raw))


@FUZZ
@given(st.sampled_from(list(Kind)), st.sampled_from([4, 6, 0, 5, 255]), st.binary(min_size=2, max_size=20))
def test_fuzz_decode_endpoint_like_values(kind: Kind, family: int, rest: bytes) -> None:
    only_codec_errors(lambda: decode_value(kind, bytes((family,)) + rest))


@FUZZ
@given(st.sampled_from(list(Kind)), st.one_of(
    st.integers(-(2**65), 2**65), st.binary(max_size=40), st.text(max_size=300), st.none(), st.booleans(),
    st.tuples(st.text(max_size=40), st.integers(-5, 70000)), st.tuples(st.integers(-3, 300), st.integers(-3, 300)),
    st.floats(allow_nan=True)))
def test_fuzz_encode_value_raises_only_codec_error(kind: Kind, value: object) -> None:
    only_codec_errors(lambda: encode_value(kind, value))


@FUZZ
@given(st.sampled_from(list(Kind)), st.data())
def test_fuzz_decoded_values_reencode_identically(kind: Kind, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=0, max_size=40))
    try:
        value = decode_value(kind, raw)
    except CodecError:
        return
    if kind is Kind.STR and len(raw) > 255:
        return  # the decoder accepts longer strings than the encoder produces (see report)
    assert encode_value(kind, value) == raw


def test_vns_parse_only_codec_errors_on_every_short_length() -> None:
    raw = wire.pack_version_not_supported(5)
    for n in range(len(raw) + 2):
        only_codec_errors(lambda n=n: wire.parse_version_not_supported((raw + b"\x00\x00")[:n]))


def test_struct_sizes_match_docs() -> None:
    assert struct.calcsize("!BBBB8sIQ") == 24
    assert struct.calcsize("!BBBB8sQ") == 20


def _ours_and_ipaddress(text: str, *, v6: bool) -> tuple[bytes | None, bytes | None]:
    """(our IP4/IP6 encoding of ``text``, ipaddress's packed form); None where either refuses it."""
    from ntmobile.wire.tlv import Kind, encode_value

    try:
        want: bytes | None = (ipaddress.IPv6Address if v6 else ipaddress.IPv4Address)(text).packed
    except ValueError:
        want = None
    try:
        got: bytes | None = encode_value(Kind.IP6 if v6 else Kind.IP4, text)
    except CodecError:
        got = None
    return got, want


@given(st.one_of(st.text(alphabet="0123456789.+_ x٤", max_size=20),
                 st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t)))))
@settings(max_examples=500)
def test_ipv4_text_is_accepted_exactly_as_ipaddress_accepts_it(text: str) -> None:
    from ntmobile.wire.tlv import Kind, decode_value

    got, want = _ours_and_ipaddress(text, v6=False)
    assert got == want
    if want is not None:
        assert decode_value(Kind.IP4, want) == str(ipaddress.IPv4Address(text))


@given(st.one_of(st.binary(min_size=16, max_size=16),
                 st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x1234]), min_size=8, max_size=8)
                 .map(lambda gs: struct.pack("!8H", *gs))))
@settings(max_examples=1000)
def test_ipv6_text_is_what_ipaddress_writes(packed: bytes) -> None:
    from ntmobile.wire.tlv import Kind, decode_value

    assert decode_value(Kind.IP6, packed) == str(ipaddress.IPv6Address(packed))


_V6_TEXT = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEFg:.%", max_size=41),
    st.binary(min_size=16, max_size=16).map(lambda b: str(ipaddress.IPv6Address(b))),
    st.binary(min_size=16, max_size=16).map(lambda b: ipaddress.IPv6Address(b).exploded),
)



@given(_V6_TEXT)
@settings(max_examples=2000)
def test_ipv6_text_is_accepted_exactly_as_ipaddress_accepts_it(text: str) -> None:
    got, want = _ours_and_ipaddress(text, v6=True)
    assert got == want


@pytest.mark.parametrize("text", ["::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8",
                                  "1:2:3:4:5:6:7:8:9", "1::2::3", ":1:2:3:4:5:6:7", "1:2:3:4:5:6:7:", "12345::",
                                  "fe80::1%eth0", "::ffff:1.2.3.4", "1:2:3:4:5:6:7::8", ":::", "", "g::1", "FD00::AB"])
def test_ipv6_edge_forms_match_ipaddress(text: str) -> None:
    got, want = _ours_and_ipaddress(text, v6=True)
    assert got == want
