#!/usr/bin/python3
"""Starts the dev stack's s3s-fs without leaving its secret key on a command line.

s3s-fs 0.14.1 (and upstream since) takes its access and secret key only as options
(`--access-key`, `--secret-key`: no environment variable, no file), so any local user
could read the secret in `ps` for as long as it ran (issue 18, finding 9). This launcher
takes the keys from the environment (ALGA_S3_ACCESS_KEY, ALGA_S3_SECRET_KEY: readable
only by the same user and root, like the HSM PIN's ALGA_HSM_PIN), removes them from its
own environment and from the copy the kernel shows in /proc/<pid>/environ, starts
s3s-fs as its child with the keys as options, and as soon as s3s-fs listens (it parsed
its options then) overwrites the secret in the child's argument memory, which is what
/proc/<pid>/cmdline and `ps` show. It checks that neither process shows the secret any
more, else stops s3s-fs and fails. The secret is on the child's command line only from
its exec to its listening socket (tens of milliseconds).

It then stays as s3s-fs's parent: a signal (TERM, INT, HUP) is passed on, and it exits
with s3s-fs's status. As the parent it may write the child's memory under Yama's
ptrace_scope 1 (the Debian default) without root.

Usage: ALGA_S3_ACCESS_KEY=… ALGA_S3_SECRET_KEY=… s3_launcher.py <s3s-fs> <host> <port> <root>
Prints nothing secret.
"""

import os
import signal
import socket
import sys
import time


def proc_fields(pid):
    """The fields of /proc/<pid>/stat after the command name, numbered from 3."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        stat = f.read()
    rest = stat[stat.rindex(b")") + 2:].split()
    return lambda n: int(rest[n - 3])


def overwrite(pid, start_field, end_field, match):
    """Overwrites with '*' every NUL-separated string of a memory area of `pid`
    (argv: fields 48/49, environ: fields 50/51 of /proc/<pid>/stat) that `match`
    selects, given the strings and an index; returns how many."""
    field = proc_fields(pid)
    start, end = field(start_field), field(end_field)
    done = 0
    with open("/proc/%d/mem" % pid, "r+b", buffering=0) as mem:
        mem.seek(start)
        area = mem.read(end - start)
        parts = area.split(b"\0")
        offset = 0
        for i, part in enumerate(parts):
            if part and match(parts, i):
                mem.seek(start + offset)
                mem.write(b"*" * len(part))
                done += 1
            offset += len(part) + 1
    return done


def shows(pid, what, secret):
    try:
        with open("/proc/%d/%s" % (pid, what), "rb") as f:
            return secret in f.read()
    except PermissionError:
        return False


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: s3_launcher.py <s3s-fs> <host> <port> <root>")
    binary, host, port, root = sys.argv[1:5]
    access = os.environ.pop("ALGA_S3_ACCESS_KEY", "")
    secret = os.environ.pop("ALGA_S3_SECRET_KEY", "")
    if not access or not secret:
        sys.exit("s3_launcher: ALGA_S3_ACCESS_KEY and ALGA_S3_SECRET_KEY must be set")
    secret_b = secret.encode()
    me = os.getpid()
    # Our own environment block as the kernel shows it (os.environ.pop only unset it).
    overwrite(me, 50, 51, lambda parts, i: parts[i].startswith(b"ALGA_S3_SECRET_KEY="))

    child = os.fork()
    if child == 0:
        try:
            os.execv(binary, [binary, "--host", host, "--port", port,
                              "--access-key", access, "--secret-key", secret, root])
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))

    # Listening means s3s-fs has parsed its options: its argv is no longer read.
    deadline = time.monotonic() + 60
    listening = False
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            sys.exit("s3_launcher: s3s-fs exited during start-up (status %d)" % status)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            listening = True
            break
        except OSError:
            time.sleep(0.02)
    hidden = 0
    if listening:
        hidden = overwrite(child, 48, 49,
                           lambda parts, i: i > 0 and parts[i - 1] == b"--secret-key"
                           and parts[i] == secret_b)
    leaked = [w for (p, w) in ((child, "cmdline"), (me, "cmdline"), (me, "environ"), (child, "environ"))
              if shows(p, w, secret_b)]
    if not listening or hidden != 1 or leaked:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        sys.exit("s3_launcher: could not hide the S3 secret key (listening: %s, overwritten: %d, "
                 "still shown in: %s); s3s-fs stopped" % (listening, hidden, ", ".join(leaked) or "-"))
    print("s3_launcher: s3s-fs (pid %d) listens on %s:%s; its secret key is off its command line"
          % (child, host, port), flush=True)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 1)


if __name__ == "__main__":
    main()
