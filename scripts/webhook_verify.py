#!/usr/bin/env python3
"""Checks alga-license webhook signatures with Python's standard library only.

The function `verify` is the receiver's side, as the README shows it: copy it into
your webhook handler. Run as a script, it reads deliveries as JSON lines
(`{"signature": <Alga-Signature header>, "body_b64": <base64 of the raw body>}`) from
the file named by its first argument, the secret from the file named by its second
(never from the command line), and checks every line; with `--tolerance 0` the
timestamp is not checked (deliveries recorded earlier).

Exit status: 0 every signature verified (and a tampered body did not), 1 one did
not, 2 could not run.
"""

import base64
import hashlib
import hmac
import json
import sys
import time


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """True when `header` (Alga-Signature) signs `body` (the raw request body)."""
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    t, sig = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit() or (tolerance and abs(time.time() - int(t)) > tolerance):
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


def main(argv):
    if len(argv) < 3:
        print("usage: webhook_verify.py DELIVERIES.jsonl SECRET_FILE [--tolerance N]", file=sys.stderr)
        return 2
    tolerance = 300
    if "--tolerance" in argv:
        tolerance = int(argv[argv.index("--tolerance") + 1])
    try:
        with open(argv[2], "rb") as f:
            secret = f.read().strip()
        with open(argv[1], encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        print(f"cannot read: {e}", file=sys.stderr)
        return 2
    bad = 0
    for n, d in enumerate(lines, 1):
        body = base64.b64decode(d["body_b64"])
        if not verify(secret, d["signature"], body, tolerance):
            print(f"line {n}: signature does not verify", file=sys.stderr)
            bad += 1
        elif verify(secret, d["signature"], body + b" ", tolerance):
            print(f"line {n}: a tampered body verified", file=sys.stderr)
            bad += 1
    print(f"{len(lines) - bad} of {len(lines)} signatures verified")
    return 1 if bad or not lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
