"""aiosmtpd handler for alga-delivery's tests: records each message as one JSON file.

Run: /usr/bin/python3 -m aiosmtpd -n -l 127.0.0.1:<port> -c smtp_recorder.Recorder <dir>
(with this directory on PYTHONPATH). For every accepted message, <dir>/<seq>.json holds
the envelope, the SMTP commands of the transaction as the server saw them, whether TLS
was active, the raw message, and Python's own parse of it (headers raw and decoded,
leaf parts decoded, parser defects), so the Rust test checks the mail with an
independent MIME parser.

Recipients starting with "tempfail" get 451, with "reject" get 550 (error classes).
"""

import base64
import email
import email.header
import email.policy
import json
import os
import re
import itertools


class Recorder:
    def __init__(self, outdir):
        self.outdir = outdir
        self.seq = itertools.count(1)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("smtp_recorder.Recorder takes one argument: the output directory")
        return cls(args[0])

    def _log(self, session, line):
        if not hasattr(session, "alga_commands"):
            session.alga_commands = []
        session.alga_commands.append(line)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._log(session, "MAIL FROM:<%s>%s" % (address, "".join(" " + o for o in mail_options)))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self._log(session, "RCPT TO:<%s>" % address)
        if address.startswith("tempfail"):
            return "451 4.3.0 try again later"
        if address.startswith("reject"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self._log(session, "RSET")
        return "250 OK"

    async def handle_NOOP(self, server, session, envelope, arg):
        self._log(session, "NOOP %s" % arg)
        return "250 OK"

    async def handle_VRFY(self, server, session, envelope, address):
        self._log(session, "VRFY %s" % address)
        return "252 no"

    async def handle_DATA(self, server, session, envelope):
        self._log(session, "DATA")
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        headers = []
        for name, value in msg.raw_items():
            # "decoded": the modern parser's view; "rfc2047": RFC 2047 section 6.2 decoding
            # of the raw value once unfolded (RFC 5322 section 2.2.3: a CRLF followed by
            # whitespace is removed; the legacy decoder would otherwise strip the
            # whitespace at the start of each folded line), with whitespace between
            # adjacent encoded words ignored, as RFC 2047 says and mail programs do.
            unfolded = re.sub(r"\r?\n(?=[ \t])", "", str(value))
            headers.append({
                "name": name,
                "raw": str(value),
                "decoded": str(msg[name]),
                "rfc2047": str(email.header.make_header(email.header.decode_header(unfolded))),
            })
        parts = []
        defects = [repr(d) for d in msg.defects]
        for part in msg.walk():
            defects.extend(repr(d) for d in part.defects)
            if part.is_multipart():
                continue
            parts.append({
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                "text": part.get_content(),
            })
        to = msg.get("To")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "commands": list(getattr(session, "alga_commands", [])),
            "authenticated": bool(getattr(session, "authenticated", False)),
            "tls": session.ssl is not None
            or (server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None),
            "raw_b64": base64.b64encode(raw).decode("ascii"),
            "headers": headers,
            "to_addresses": [
                {"display_name": a.display_name, "addr_spec": a.addr_spec}
                for a in (to.addresses if to is not None else [])
            ],
            "content_type": msg.get_content_type(),
            "parts": parts,
            "defects": defects,
        }
        session.alga_commands = []
        n = next(self.seq)
        tmp = os.path.join(self.outdir, ".%06d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.outdir, "%06d.json" % n))
        return "250 OK stored"


def main():
    """A recording server with STARTTLS and AUTH (which `python3 -m aiosmtpd` cannot set up).

    Arguments: <host> <port> <outdir> <tlscert> <tlskey> <user> <password-file>
    """
    import asyncio
    import signal
    import ssl
    import sys

    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    host, port, outdir, cert, key, user, password_file = sys.argv[1:8]
    with open(password_file, "rb") as f:
        password = f.read().splitlines()[0]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password
        )
        return AuthResult(success=ok, handled=False)

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Recorder(outdir),
                hostname="recorder.alga.test",
                tls_context=ctx,
                require_starttls=True,
                authenticator=authenticator,
                auth_required=True,
                auth_require_tls=True,
            ),
            host=host,
            port=int(port),
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
