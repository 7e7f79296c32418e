"""The sock_diag codec and /proc/net parser of `procs`, against layouts written out by hand here.

The kernel silently drops a request whose nlmsg_len is wrong (no reply at all), and reads ports
big-endian inside otherwise native structs: these tests pin the byte layout from the kernel
headers (linux/inet_diag.h) independently of the module's own struct formats. No root needed.
"""

import errno
import socket
import struct
import sys
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snitchd.procs import sockdiag

INET_DIAG_REQ_V2_SIZE = 56  # family, protocol, ext, pad, states, inet_diag_sockid (48)
INET_DIAG_MSG_SIZE = 72  # family, state, timer, retrans, sockid (48), expires..inode (20)


COOKIE = b"\x01" * 8


def crafted_msg(*, state, uid, inode, seq=1, family=socket.AF_INET, trailer=b"", cookie=COOKIE):
    """An inet_diag_msg as the kernel writes it, field by field, with optional attributes."""
    body = bytes([family, state, 0, 0])
    body += (40000).to_bytes(2, "big") + (443).to_bytes(2, "big")
    body += ip_address("192.0.2.10").packed.ljust(16, b"\0")
    body += ip_address("198.51.100.7").packed.ljust(16, b"\0")
    body += struct.pack("=I", 0) + cookie  # if, cookie (two host-order u32, low word first)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    assert len(body) == INET_DIAG_MSG_SIZE
    header = struct.pack("=IHHII", 16 + len(body) + len(trailer), 20, 0, seq, 0)
    return header + body + trailer


def crafted_error(code, seq=1):
    original = struct.pack("=IHHII", 72, 20, 1, seq, 0)
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -code) + original


def test_request_is_one_nlmsg_with_inet_diag_req_v2_layout():
    src, dst = ip_address("192.0.2.1").packed, ip_address("198.51.100.2").packed
    data = sockdiag._encode_request(7, socket.AF_INET, socket.IPPROTO_TCP, src, 1234, dst, 443, 3)

    assert len(data) == 16 + INET_DIAG_REQ_V2_SIZE
    length, kind, flags, seq, port_id = struct.unpack_from("=IHHII", data)
    assert (length, kind, flags, seq, port_id) == (len(data), 20, 1, 7, 0)
    assert data[16:20] == bytes([socket.AF_INET, socket.IPPROTO_TCP, 0, 0])
    assert struct.unpack_from("=I", data, 20)[0] == 0xFFFFFFFF  # every TCP state
    assert data[24:26] == (1234).to_bytes(2, "big")
    assert data[26:28] == (443).to_bytes(2, "big")
    assert data[28:44] == src + bytes(12)
    assert data[44:60] == dst + bytes(12)
    assert struct.unpack_from("=I", data, 60)[0] == 3
    assert data[64:72] == b"\xff" * 8  # INET_DIAG_NOCOOKIE


def test_request_has_no_dump_flag():
    """NLM_F_DUMP would turn the exact lookup into a walk of every socket."""
    data = sockdiag._encode_request(
        1, socket.AF_INET6, socket.IPPROTO_UDP, bytes(16), 1, bytes(16), 2
    )
    flags = struct.unpack_from("=IHH", data)[2]
    assert flags & 0x300 == 0


@given(
    family=st.sampled_from([socket.AF_INET, socket.AF_INET6]),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_request_round_trips_every_port_and_address(family, sport, dport, seq, data):
    size = 4 if family == socket.AF_INET else 16
    src = data.draw(st.binary(min_size=size, max_size=size))
    dst = data.draw(st.binary(min_size=size, max_size=size))
    raw = sockdiag._encode_request(seq, family, socket.IPPROTO_UDP, src, sport, dst, dport)
    got = struct.unpack("!HH16s16s", raw[24:60])
    assert got == (sport, dport, src.ljust(16, b"\0"), dst.ljust(16, b"\0"))
    assert struct.unpack_from("=I", raw, 8)[0] == seq


ONES = 0x0101010101010101


def test_reply_gives_state_uid_inode_and_cookie():
    got = sockdiag._decode_reply(crafted_msg(state=2, uid=1000, inode=424242))
    assert got == (2, 1000, 424242, ONES)


def test_cookie_is_two_u32_low_word_first():
    """sock_diag_save_cookie writes cookie[0] = low 32 bits, cookie[1] = high: the BPF
    recorder's bpf_get_socket_cookie() must compare equal to what we decode."""
    raw = struct.pack("=II", 0x89ABCDEF, 0x01234567)
    got = sockdiag._decode_reply(crafted_msg(state=1, uid=0, inode=1, cookie=raw))
    assert got is not None
    assert got[3] == 0x0123456789ABCDEF


def test_reply_with_trailing_attributes_still_parses():
    trailer = struct.pack("=HH", 8, 4) + b"\0\0\0\0"  # an rtattr the kernel may append
    got = sockdiag._decode_reply(crafted_msg(state=1, uid=0, inode=7, trailer=trailer))
    assert got == (1, 0, 7, ONES)


@given(uid=st.integers(0, 2**32 - 1), inode=st.integers(0, 2**32 - 1), state=st.integers(0, 255))
def test_reply_round_trips_any_uid_and_inode(uid, inode, state):
    assert sockdiag._decode_reply(crafted_msg(state=state, uid=uid, inode=inode)) == (
        state,
        uid,
        inode,
        ONES,
    )


def test_enoent_means_no_such_socket():
    assert sockdiag._decode_reply(crafted_error(errno.ENOENT)) is None


def test_other_netlink_errors_are_raised_with_their_errno():
    with pytest.raises(OSError) as caught:
        sockdiag._decode_reply(crafted_error(errno.EPERM))
    assert caught.value.errno == errno.EPERM


def test_truncated_or_foreign_messages_are_refused():
    with pytest.raises(OSError) as caught:
        sockdiag._decode_reply(crafted_msg(state=1, uid=0, inode=1)[:60])
    assert caught.value.errno == errno.EPROTO
    foreign = bytearray(crafted_msg(state=1, uid=0, inode=1))
    foreign[4:6] = struct.pack("=H", 3)  # NLMSG_DONE
    with pytest.raises(OSError):
        sockdiag._decode_reply(bytes(foreign))


def proc_net_hex(address):
    """How /proc/net/{raw,icmp}{,6} print an address: host-order 32-bit words, %08X."""
    packed = ip_address(address).packed
    return "".join(
        f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4)
    )


def test_proc_net_rows_give_packed_addresses_port_uid_inode():
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"  # noqa: E501
    line4 = (
        f"  26: {proc_net_hex('192.0.2.5')}:0001 {proc_net_hex('0.0.0.0')}:0000 07 "
        "00000000:00000000 00:00000000 00000000  1000        0 31337 2 0000000000000000 0\n"
    )
    line6 = (
        f"  58: {proc_net_hex('2001:db8::1')}:0001 {proc_net_hex('2001:db8::2')}:0000 07 "
        "00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n"
    )
    rows = sockdiag._parse_proc_net((header + line4 + line6).encode())
    assert rows == [
        (ip_address("192.0.2.5").packed, 1, bytes(4), 1000, 31337),
        (ip_address("2001:db8::1").packed, 1, ip_address("2001:db8::2").packed, 0, 4242),
    ]


def test_proc_net_header_only_gives_no_rows():
    assert sockdiag._parse_proc_net(b"  sl  local_address rem_address\n") == []
