#!/usr/bin/python3
"""Tiny QMP command-line client (python3 stdlib only).

Usage:
  qmp.py SOCKET COMMAND [JSON-ARGS]   print the "return" value as JSON
  qmp.py SOCKET --hmp "HMP COMMAND"   run human-monitor-command, print its output

Exit status: 0 on success; 1 if QEMU returned an error (desc on stderr) or, for
--hmp, if the output looks like an error (starts with "Error" or "unknown
command", or contains "failed"); for "qemu-io ..." any reply text at all is an
error; 2 on usage or connection problems.
Environment: QMP_TIMEOUT (seconds, default 30).

Note (QEMU 7.2): HMP qemu-io prints its own results ("wrote 65536/65536 bytes...",
"write failed: ...", "Pattern verification failed ...") on QEMU's stdout, not into
the HMP reply; only HMP-level errors (unknown device, permission conflict) come
back here. tests/lib/vm.sh (vm_write, vm_qemu_io) checks QEMU's log for the rest.
"""
import json
import os
import socket
import sys


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0
        greeting = self._read_msg()
        if "QMP" not in greeting:
            raise QMPError("unexpected greeting: %r" % greeting)
        self.command("qmp_capabilities")

    def _read_msg(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("connection closed by QEMU")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip()
        if not line:
            return self._read_msg()
        return json.loads(line)

    def command(self, name, args=None):
        self.next_id += 1
        cid = "qmp.py-%d" % self.next_id
        msg = {"execute": name, "id": cid}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            resp = self._read_msg()
            if "event" in resp:
                continue  # asynchronous event: not our reply
            if resp.get("id") != cid:
                continue
            if "error" in resp:
                err = resp["error"]
                raise QMPError("%s: %s" % (err.get("class", "Error"), err.get("desc", err)))
            return resp.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def hmp_failed(command_line, out):
    """Heuristic: HMP reports errors as reply text, not as QMP errors."""
    s = out.strip()
    low = s.lower()
    if command_line.lstrip().startswith("qemu-io") and s:
        return True  # qemu-io's normal output never comes back in the reply
    return (low.startswith("error") or "failed" in low
            or low.startswith("unknown command") or "\nerror" in low)


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    path, cmd = argv[1], argv[2]
    timeout = float(os.environ.get("QMP_TIMEOUT", "30"))
    try:
        q = QMP(path, timeout)
    except (OSError, QMPError, ValueError) as e:
        sys.stderr.write("qmp.py: cannot talk to %s: %s\n" % (path, e))
        return 2
    try:
        if cmd == "--hmp":
            if len(argv) != 4:
                sys.stderr.write("qmp.py: --hmp needs exactly one command string\n")
                return 2
            out = q.command("human-monitor-command", {"command-line": argv[3]})
            out = out or ""
            sys.stdout.write(out)
            if out and not out.endswith("\n"):
                sys.stdout.write("\n")
            if hmp_failed(argv[3], out):
                sys.stderr.write("qmp.py: HMP command failed: %s\n" % out.strip())
                return 1
            return 0
        args = None
        if len(argv) > 3:
            try:
                args = json.loads(argv[3])
            except ValueError as e:
                sys.stderr.write("qmp.py: bad JSON arguments: %s\n" % e)
                return 2
            if not isinstance(args, dict):
                sys.stderr.write("qmp.py: JSON arguments must be an object\n")
                return 2
        ret = q.command(cmd, args)
        print(json.dumps(ret, indent=None, sort_keys=True))
        return 0
    except QMPError as e:
        sys.stderr.write("%s\n" % e)
        return 1
    except (OSError, ValueError) as e:
        sys.stderr.write("qmp.py: %s\n" % e)
        return 2
    finally:
        q.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
