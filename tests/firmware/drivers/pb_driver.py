# Decode and re-encode the protobuf vectors in argv[1] with firmware pb.py;
# print FAIL lines for mismatches, then DONE ok=<n> bad=<n>.
import gc
import json
import sys
from binascii import hexlify, unhexlify

import pb

MALFORMED = (b"\x08", b"\x08\x80", b"\x08" + b"\xff" * 10 + b"\x01", b"\x12\x05ab", b"\x00\x01",
             b"\x0b", b"\x09\x01\x02", b"\x12\x01\xff")


def main():
    ok = bad = 0
    peak = 0
    with open(sys.argv[1]) as f:
        for line in f:
            name, fields, wire = json.loads(line)
            t = getattr(pb, name)
            for _, field, kind in pb.fields(t):
                if kind == pb.BYTES:
                    fields[field] = unhexlify(fields[field])
            wire = unhexlify(wire)
            enc = pb.encode(t, fields)
            dec = pb.decode(t, wire)
            if bytes(enc) == wire and dec == fields:
                ok += 1
            else:
                bad += 1
                print("FAIL", name, hexlify(enc), dec)
            peak = max(peak, gc.mem_alloc())
            gc.collect()
    for data in MALFORMED:
        try:
            pb.decode(pb.MsgProto, data)
            print("FAIL accepted", hexlify(data))
            bad += 1
        except ValueError:
            pass
    print("PEAK", peak)
    print("DONE ok=%d bad=%d" % (ok, bad))


main()
