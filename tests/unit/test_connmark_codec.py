"""The ctnetlink request that keeps a verdict on a conntrack entry, read back by pyroute2's own
decoder (an independent reading of the same kernel format). The kernel acts on it in
tests/integration/test_connmark.py."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from snitch_common.records import Flow, Proto
from snitchd.connmark import encode_request

MARK, MASK = 0x5A1D0000, 0xFFFF0000
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400


def _decode(data: bytes | None) -> Any:
    assert data is not None
    msg = nfct_msg(data)
    msg.decode()
    assert msg["header"]["length"] == len(data)
    assert msg["header"]["type"] == (1 << 8) | 0  # CTNETLINK, IPCTNL_MSG_CT_NEW
    return msg


def _tuple(msg: Any, name: str) -> tuple[Any, ...]:
    tup = msg.get_attr(name)
    ip, proto = tup.get_attr("CTA_TUPLE_IP"), tup.get_attr("CTA_TUPLE_PROTO")
    return (*(value for _, value in ip["attrs"]), *(value for _, value in proto["attrs"]))


@pytest.mark.parametrize(
    ("src", "dst", "family"),
    [("192.0.2.1", "192.0.2.2", 2), ("2001:db8:1::1", "2001:db8:1::2", 10)],
)
def test_create_names_both_directions_with_mark_and_timeout(
    src: str, dst: str, family: int
) -> None:
    flow = Flow(Proto.UDP, ip_address(src), 40000, ip_address(dst), 9999, "veth0", 17)
    msg = _decode(encode_request(7, flow, MARK, MASK))
    assert msg["nfgen_family"] == family
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    assert msg["header"]["sequence_number"] == 7
    assert _tuple(msg, "CTA_TUPLE_ORIG") == (src, dst, 17, 40000, 9999)
    assert _tuple(msg, "CTA_TUPLE_REPLY") == (dst, src, 17, 9999, 40000)
    assert msg.get_attr("CTA_TIMEOUT") == 30
    assert (msg.get_attr("CTA_MARK"), msg.get_attr("CTA_MARK_MASK")) == (MARK, MASK)


@pytest.mark.parametrize(
    ("src", "dst", "ipproto", "types"),
    [("192.0.2.1", "192.0.2.2", 1, (8, 0)), ("2001:db8:1::1", "2001:db8:1::2", 58, (128, 129))],
)
def test_icmp_echo_uses_its_identifier_and_reply_type(
    src: str, dst: str, ipproto: int, types: tuple[int, int]
) -> None:
    flow = Flow(Proto.ICMP, ip_address(src), 77, ip_address(dst), 0, "", ipproto)
    msg = _decode(encode_request(2, flow, MARK, MASK))
    assert _tuple(msg, "CTA_TUPLE_ORIG") == (src, dst, ipproto, 77, types[0], 0)
    assert _tuple(msg, "CTA_TUPLE_REPLY") == (dst, src, ipproto, 77, types[1], 0)


def test_flows_without_a_nameable_tuple_are_left_alone() -> None:
    """ICMP other than echo (no identifier in `Flow`) and other protocols: no request."""
    a, b = ip_address("192.0.2.1"), ip_address("192.0.2.2")
    assert encode_request(1, Flow(Proto.ICMP, a, 0, b, 0, "", 1), MARK, MASK) is None
    assert encode_request(1, Flow(Proto.OTHER, a, 0, b, 0, "", 47), MARK, MASK) is None
