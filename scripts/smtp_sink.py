#!/usr/bin/python3
"""SMTP sink of the alga-license local dev stack.

Accepts every message on a loopback port and stores each one as a file in a mail
directory (ALGA_MAIL_DIR), named <unix-ns>-<pid>-<seq>.eml so that sorting names sorts
by arrival. A file is the raw DATA exactly as received (CRLF line endings), preceded by
an envelope header block that this sink adds:

    X-Alga-Sink-Mail-From: <sender@example>
    X-Alga-Sink-Rcpt-To: <rcpt1@example>        (one line per RCPT TO)
    X-Alga-Sink-Received: 2025-01-01T12:00:00.123456+00:00

Each file is written to a temporary directory next to the mail directory, flushed and
renamed into place, so a reader never sees a partial message and the mail directory
holds nothing but *.eml files.

Needs Debian's python3-aiosmtpd: run it with /usr/bin/python3.
"""

import argparse
import asyncio
import datetime
import itertools
import logging
import os
import signal
import sys
import time

from aiosmtpd.smtp import SMTP

log = logging.getLogger("smtp-sink")


class MailDirSink:
    def __init__(self, maildir, tmpdir):
        self.maildir = maildir
        self.tmpdir = tmpdir
        self.seq = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        received = datetime.datetime.now(datetime.timezone.utc).isoformat()
        head = "X-Alga-Sink-Mail-From: <%s>\r\n" % (envelope.mail_from or "")
        head += "".join("X-Alga-Sink-Rcpt-To: <%s>\r\n" % r for r in envelope.rcpt_tos)
        head += "X-Alga-Sink-Received: %s\r\n" % received
        name = "%020d-%d-%06d.eml" % (time.time_ns(), os.getpid(), next(self.seq))
        try:
            self.store(name, head.encode("utf-8", "surrogateescape") + raw)
        except OSError:
            log.exception("could not store a message")
            return "451 4.3.0 the sink could not store the message"
        log.info(
            "stored %s: from=<%s> to=%s bytes=%d peer=%s",
            name,
            envelope.mail_from,
            ",".join("<%s>" % r for r in envelope.rcpt_tos),
            len(raw),
            session.peer[0] if session.peer else "?",
        )
        return "250 2.0.0 OK queued as %s" % name

    def store(self, name, data):
        tmp = os.path.join(self.tmpdir, name + ".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, os.path.join(self.maildir, name))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def temp_dir_for(maildir):
    """A directory on the same file system as maildir, outside it (rename stays atomic)."""
    tmpdir = os.path.abspath(maildir).rstrip("/") + ".tmp"
    os.makedirs(tmpdir, exist_ok=True)
    if os.stat(tmpdir).st_dev != os.stat(maildir).st_dev:
        tmpdir = os.path.join(maildir, ".tmp")
        os.makedirs(tmpdir, exist_ok=True)
    for leftover in os.listdir(tmpdir):
        if leftover.endswith(".part"):
            os.unlink(os.path.join(tmpdir, leftover))
    return tmpdir


async def serve(args):
    os.makedirs(args.maildir, exist_ok=True)
    handler = MailDirSink(args.maildir, temp_dir_for(args.maildir))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="smtp-sink.alga.test",
            ident="alga-license dev SMTP sink",
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=args.max_size,
        ),
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d, storing mail in %s", args.host, args.port, args.maildir)
    await stop.wait()
    log.info("stopping")
    server.close()
    await server.wait_closed()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("ALGA_SMTP_PORT", "2525")))
    p.add_argument("--maildir", default=os.environ.get("ALGA_MAIL_DIR", ".dev/mail"))
    p.add_argument("--max-size", type=int, default=32 * 1024 * 1024)
    args = p.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every SMTP command at INFO (an AUTH line would carry credentials)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
