"""The hand-written PubAck encoding is the protobuf library's, byte for byte."""

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.pb import pub_ack


@pytest.mark.parametrize("guid,error", [
    ("", ""), ("g", ""), ("", "stan: refused"), ("x" * 127, ""), ("x" * 128, "e" * 300),
    ("ü-guid", "fehler ß"), ("g" * 20000, "e" * 3),
])
def test_encoding_matches_protobuf(guid, error):
    assert pub_ack.encode(guid, error) == pb.PubAck(guid=guid, error=error).SerializeToString()
    back = pb.PubAck.FromString(pub_ack.encode(guid, error))
    assert (back.guid, back.error) == (guid, error)
