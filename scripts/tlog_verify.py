#!/usr/bin/env python3
"""An independent check of alga-license's audit log as a transparency log.

Written from the specifications only, sharing no code with the Rust side (nor any
library beyond Python's standard one):

- RFC 6962 section 2.1: the Merkle tree hash, leaves SHA-256(0x00 || entry), nodes
  SHA-256(0x01 || left || right); the audit path check as RFC 9162 section 2.1.3.2
  states it;
- c2sp.org/signed-note: the note, its signature lines, Ed25519 key ids and verifier
  keys; Ed25519 itself from RFC 8032 section 5.1.7 (verification), with the curve
  arithmetic written out below;
- c2sp.org/tlog-checkpoint and c2sp.org/tlog-tiles: the checkpoint body, tile paths,
  hash tiles and entry bundles.

It reads a log published as files (``alga-audit publish --to DIR``) or served over
HTTPS (``--url https://gateway/audit/log --ca ca.pem``), recomputes the whole tree
from the entry bundles, checks every hash tile and the checkpoint's root and
signature, and checks inclusion proof bundles (``GET /audit/log/proof/{seq}``).

Exit status: 0 everything verified, 1 something did not verify, 2 could not run.
"""

import argparse
import base64
import hashlib
import json
import os
import ssl
import sys
import urllib.request

# ---------------------------------------------------------------------------
# Ed25519 verification (RFC 8032, section 5.1.7), extended twisted Edwards
# coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
# ---------------------------------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k, pt):
    acc = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        k >>= 1
    return acc


def _same(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _x_from_y(y, sign):
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x2 = u * pow(v, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _decode_point(b):
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    x = _x_from_y(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


_BY = 4 * pow(5, P - 2, P) % P
BASE = (_x_from_y(_BY, 0), _BY, 1, _x_from_y(_BY, 0) * _BY % P)


def ed25519_verify(public, message, signature):
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decode_point(public)
    r = _decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _same(_mul(s, BASE), _add(r, _mul(k, a)))


# ---------------------------------------------------------------------------
# RFC 6962 section 2.1
# ---------------------------------------------------------------------------


def leaf(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves):
    """MTH(D[n]) over leaf hashes, as section 2.1 defines it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def check_audit_path(index, size, leaf_hash, path, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# ---------------------------------------------------------------------------
# c2sp.org/signed-note and c2sp.org/tlog-checkpoint
# ---------------------------------------------------------------------------


class Refused(Exception):
    pass


def parse_vkey(text):
    name, key_id, material = text.strip().split("+", 2)
    material = base64.b64decode(material, validate=True)
    if material[:1] != b"\x01" or len(material) != 33:
        raise Refused("verifier key is not an Ed25519 (type 0x01) key")
    expect = hashlib.sha256(name.encode() + b"\n" + material).digest()[:4]
    if expect.hex() != key_id:
        raise Refused("verifier key: key id does not match the key")
    return name, expect, material[1:]


def verify_note(note, vkeys):
    """Returns (origin, size, root) of a checkpoint signed by one of vkeys."""
    if "\n\n" not in note or not note.endswith("\n"):
        raise Refused("not a signed note")
    body, sigs = note.rsplit("\n\n", 1)
    body += "\n"
    good = False
    for line in sigs.rstrip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            raise Refused("a signature line does not start with an em dash")
        name, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64, validate=True)
        for vname, vid, pub in vkeys:
            if name == vname and raw[:4] == vid:
                if not ed25519_verify(pub, body.encode(), raw[4:]):
                    raise Refused("the log key's signature does not verify")
                good = True
    if not good:
        raise Refused("no signature by a trusted log key")
    lines = body.split("\n")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    if origin != vkeys[0][0]:
        raise Refused("checkpoint origin is not the key's name")
    if len(root) != 32 or str(size) != lines[1]:
        raise Refused("malformed checkpoint body")
    return origin, size, root


# ---------------------------------------------------------------------------
# c2sp.org/tlog-tiles
# ---------------------------------------------------------------------------


def tile_path(level, index, width):
    groups = []
    n = index
    while True:
        groups.append(n % 1000)
        n //= 1000
        if n == 0:
            break
    parts = ["x%03d" % g for g in reversed(groups[1:])] + ["%03d" % groups[0]]
    path = "tile/%s/%s" % (level, "/".join(parts))
    return path if width == 256 else "%s.p/%d" % (path, width)


class Source:
    def __init__(self, directory=None, url=None, ca=None):
        self.directory, self.url = directory, url
        self.ctx = ssl.create_default_context(cafile=ca) if ca else None

    def get(self, path):
        if self.directory:
            with open(os.path.join(self.directory, path), "rb") as f:
                return f.read()
        with urllib.request.urlopen(self.url.rstrip("/") + "/" + path, context=self.ctx, timeout=10) as r:
            return r.read()


def entries_of(bundle):
    out, i = [], 0
    while i < len(bundle):
        n = int.from_bytes(bundle[i : i + 2], "big")
        out.append(bundle[i + 2 : i + 2 + n])
        i += 2 + n
    if i != len(bundle):
        raise Refused("truncated entry bundle")
    return out


def check_tiles(src, size, root):
    """Recomputes the tree from the entry bundles; checks every hash tile and the root."""
    leaves = []
    for n in range((size + 255) // 256):
        width = min(256, size - n * 256)
        entries = entries_of(src.get(tile_path("entries", n, width)))
        if len(entries) != width:
            raise Refused("entry bundle %d holds %d entries, expected %d" % (n, len(entries), width))
        leaves.extend(leaf(e) for e in entries)
    level, hashes, tiles = 0, leaves, 0
    while len(hashes) > 0:
        for n in range((len(hashes) + 255) // 256):
            chunk = hashes[n * 256 : n * 256 + 256]
            data = src.get(tile_path(level, n, len(chunk)))
            tiles += 1
            if data != b"".join(chunk):
                raise Refused("hash tile %s does not match the entries" % tile_path(level, n, len(chunk)))
        full = len(hashes) // 256
        hashes = [mth(hashes[i * 256 : i * 256 + 256]) for i in range(full)]
        level += 1
    if mth(leaves) != root:
        raise Refused("the entries do not hash to the checkpoint's root")
    return tiles


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vkey", required=True, help="file with the log's verifier key(s), one per line")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", help="a directory written by alga-audit publish")
    src.add_argument("--url", help="the log's URL prefix, e.g. https://host:8443/audit/log")
    ap.add_argument("--ca", help="CA bundle for an https --url")
    ap.add_argument("--proof", action="append", default=[], help="an inclusion proof bundle (JSON)")
    args = ap.parse_args()
    try:
        with open(args.vkey) as f:
            vkeys = [parse_vkey(l) for l in f if l.strip() and not l.startswith("#")]
        source = Source(args.dir, args.url, args.ca)
        note = source.get("checkpoint").decode()
    except (OSError, ValueError, Refused) as e:
        print("tlog_verify: cannot run: %s" % e, file=sys.stderr)
        return 2
    try:
        origin, size, root = verify_note(note, vkeys)
        print("checkpoint: %s, size %d, signed by the log key: OK" % (origin, size))
        tiles = check_tiles(source, size, root)
        print("tiles: %d hash tiles and %d entry bundles match; root recomputed: OK" % (tiles, (size + 255) // 256))
        for path in args.proof:
            with open(path) as f:
                b = json.load(f)
            p_origin, p_size, p_root = verify_note(b["checkpoint"], vkeys)
            if p_size != b["size"]:
                raise Refused("%s: proof for size %d, checkpoint of %d" % (path, b["size"], p_size))
            proof = [bytes.fromhex(h) for h in b["proof"]]
            if not check_audit_path(b["index"], b["size"], leaf(bytes.fromhex(b["entry"])), proof, p_root):
                raise Refused("%s: record %d is not proven in the checkpoint" % (path, b["index"] + 1))
            print("proof: record %d is in the tree of size %d: OK" % (b["index"] + 1, p_size))
    except (OSError, ValueError, KeyError, TypeError, Refused) as e:
        print("tlog_verify: REFUSED: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
