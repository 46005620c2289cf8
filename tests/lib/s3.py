#!/usr/bin/env python3
"""A small dependency-free S3 client for Ferry's tests and benchmarks.

Standard library only: http.client, hmac, hashlib. AWS Signature Version 4,
path-style addressing (http://HOST:PORT/BUCKET/KEY), which is what radosgw
serves on 127.0.0.1. The endpoint and keys come from the environment that
tests/lib/ceph.sh exports:

  CEPH_S3_ENDPOINT    http://127.0.0.1:PORT (https:// works too)
  CEPH_S3_ACCESS_KEY
  CEPH_S3_SECRET_KEY
  CEPH_S3_REGION      the zonegroup name for SigV4 ("default" for radosgw)
  CEPH_S3_UNSIGNED_PAYLOAD=1  send PUT bodies as UNSIGNED-PAYLOAD (no SHA-256
                      of the body on the client; headers are still signed)

Commands (exit 0 on success, 1 on an S3 error or a failed check, 2 on usage):

  s3.py lb                          list the buckets (ListBuckets)
  s3.py mb BUCKET                   create a bucket
  s3.py rb BUCKET                   remove an (empty) bucket
  s3.py put BUCKET KEY FILE         upload FILE ("-": stdin)
  s3.py get BUCKET KEY FILE         download to FILE ("-": stdout)
  s3.py head BUCKET KEY             print the object's size; exit 1 if absent
  s3.py ls BUCKET [PREFIX]          ListObjectsV2, every page: "KEY SIZE" lines
  s3.py rm BUCKET KEY               delete an object
  s3.py grep BUCKET PREFIX HEX      download every object under PREFIX; exit 1
                                    (and name them) if any contains the bytes HEX
  s3.py bench-put BUCKET [-t N] [-n M] [-s BYTES] [--prefix P]
  s3.py bench-get BUCKET [-t N] [--prefix P]
                                    N threads put M objects of BYTES random bytes
                                    (or get every object under P); one JSON line
                                    with mib_s, requests, bytes, seconds
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CHUNK = 1 << 20


class S3Error(Exception):
    def __init__(self, status, reason, body, what):
        self.status = status
        code = ""
        try:
            el = ET.fromstring(body).find("Code")
            code = el.text if el is not None else ""
        except ET.ParseError:
            pass
        self.code = code
        super().__init__(f"{what}: HTTP {status} {reason} {code}".rstrip())


def _quote(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


class Client:
    def __init__(self, endpoint=None, access_key=None, secret_key=None, region=None, timeout=120):
        env = os.environ
        endpoint = endpoint or env.get("CEPH_S3_ENDPOINT")
        self.access_key = access_key or env.get("CEPH_S3_ACCESS_KEY")
        self.secret_key = secret_key or env.get("CEPH_S3_SECRET_KEY")
        self.region = region or env.get("CEPH_S3_REGION") or "default"
        if not endpoint or not self.access_key or not self.secret_key:
            raise SystemExit("s3.py: set CEPH_S3_ENDPOINT, CEPH_S3_ACCESS_KEY and CEPH_S3_SECRET_KEY")
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SystemExit(f"s3.py: bad CEPH_S3_ENDPOINT {endpoint!r}")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        default_port = 443 if u.scheme == "https" else 80
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self.timeout = timeout
        self.unsigned_payload = env.get("CEPH_S3_UNSIGNED_PAYLOAD", "") not in ("", "0")
        self._local = threading.local()  # one keep-alive connection per thread

    # -- transport ---------------------------------------------------------
    def _conn(self, fresh=False):
        c = getattr(self._local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def _sign(self, method, path, query, headers, payload_hash):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers["host"] = self.host_header
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        canonical_query = "&".join(
            f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        names = sorted(h.lower() for h in headers)
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        canonical_headers = "".join(f"{n}:{lower[n]}\n" for n in names)
        signed = ";".join(names)
        canonical = "\n".join([method, path, canonical_query, canonical_headers, signed, payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}")
        return canonical_query

    def request(self, method, bucket="", key="", query=None, body=b"", headers=None,
                ok=(200, 204), sink=None):
        """One signed request. body: bytes. sink: a callable taking chunks of
        the response body (streamed); without it the body is returned."""
        query = dict(query or {})
        path = "/" + _quote(bucket) if bucket else "/"
        if key:
            path += "/" + _quote(key, safe="-_.~/")
        if body and self.unsigned_payload:
            payload_hash = "UNSIGNED-PAYLOAD"
        else:
            payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        last = None
        for attempt in range(2):  # one retry on a dropped keep-alive connection
            hdrs = dict(headers or {})
            if body or method in ("PUT", "POST"):
                hdrs["content-length"] = str(len(body))
            cq = self._sign(method, path, query, hdrs, payload_hash)
            url = path + ("?" + cq if cq else "")
            conn = self._conn(fresh=attempt > 0)
            try:
                conn.request(method, url, body=body or None, headers=hdrs)
                resp = conn.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = e
                conn.close()
                self._local.conn = None
                continue
            if resp.status not in ok:
                data = resp.read()
                raise S3Error(resp.status, resp.reason, data, f"{method} {path}")
            if sink is None:
                return resp.read(), resp
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                sink(chunk)
            return b"", resp
        raise ConnectionError(f"{method} {path}: {last}")

    # -- operations --------------------------------------------------------
    def buckets(self):
        data, _ = self.request("GET")
        root = ET.fromstring(data)
        return [el.text for el in root.iter() if el.tag.endswith("}Name") or el.tag == "Name"]

    def make_bucket(self, bucket):
        self.request("PUT", bucket)

    def remove_bucket(self, bucket):
        self.request("DELETE", bucket)

    def put(self, bucket, key, data):
        self.request("PUT", bucket, key, body=data)

    def get(self, bucket, key, sink=None):
        data, _ = self.request("GET", bucket, key, sink=sink)
        return data

    def head(self, bucket, key):
        _, resp = self.request("HEAD", bucket, key)
        return int(resp.getheader("Content-Length", "0"))

    def delete(self, bucket, key):
        self.request("DELETE", bucket, key)

    def list(self, bucket, prefix=""):
        """Yields (key, size) for every object under prefix, every page."""
        token = None
        while True:
            q = {"list-type": "2", "max-keys": "1000"}
            if prefix:
                q["prefix"] = prefix
            if token:
                q["continuation-token"] = token
            data, _ = self.request("GET", bucket, query=q)
            root = ET.fromstring(data)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.findall(f"{ns}Contents"):
                yield c.findtext(f"{ns}Key"), int(c.findtext(f"{ns}Size") or 0)
            truncated = (root.findtext(f"{ns}IsTruncated") or "false").lower() == "true"
            token = root.findtext(f"{ns}NextContinuationToken")
            if not truncated:
                return
            if not token:
                raise S3Error(0, "truncated listing without NextContinuationToken", b"", f"GET /{bucket}")


# -- benchmarks ------------------------------------------------------------
def _run_threads(n, work):
    errors = []

    def wrap(i):
        try:
            work(i)
        except Exception as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    if errors:
        raise errors[0]
    return dt


def bench_put(cli, bucket, threads, count, size, prefix):
    # One random buffer per thread, its first 16 bytes made unique per object
    # (so no two objects are equal) without generating count*size random bytes.
    counter = iter(range(count))
    lock = threading.Lock()
    total = [0, 0]

    def work(i):
        buf = bytearray(os.urandom(size))
        while True:
            with lock:
                j = next(counter, None)
            if j is None:
                return
            buf[:16] = os.urandom(16)
            cli.put(bucket, f"{prefix}{j:08d}", bytes(buf))
            with lock:
                total[0] += 1
                total[1] += size

    dt = _run_threads(threads, work)
    return {"op": "put", "threads": threads, "requests": total[0], "bytes": total[1],
            "seconds": round(dt, 3), "mib_s": round(total[1] / dt / 2**20, 1)}


def bench_get(cli, bucket, threads, prefix):
    keys = [k for k, _ in cli.list(bucket, prefix)]
    it = iter(keys)
    lock = threading.Lock()
    total = [0, 0]

    def work(i):
        while True:
            with lock:
                k = next(it, None)
            if k is None:
                return
            n = [0]

            def sink(chunk):
                n[0] += len(chunk)

            cli.get(bucket, k, sink=sink)
            with lock:
                total[0] += 1
                total[1] += n[0]

    dt = _run_threads(threads, work)
    return {"op": "get", "threads": threads, "requests": total[0], "bytes": total[1],
            "seconds": round(dt, 3), "mib_s": round(total[1] / dt / 2**20, 1)}


# -- command line ----------------------------------------------------------
def main(argv):
    p = argparse.ArgumentParser(prog="s3.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, args in [("mb", ["bucket"]), ("rb", ["bucket"]),
                       ("put", ["bucket", "key", "file"]), ("get", ["bucket", "key", "file"]),
                       ("head", ["bucket", "key"]), ("rm", ["bucket", "key"]),
                       ("grep", ["bucket", "prefix", "hexmarker"])]:
        sp = sub.add_parser(name)
        for a in args:
            sp.add_argument(a)
    sub.add_parser("lb")
    sp = sub.add_parser("ls")
    sp.add_argument("bucket")
    sp.add_argument("prefix", nargs="?", default="")
    sp = sub.add_parser("bench-put")
    sp.add_argument("bucket")
    sp.add_argument("-t", "--threads", type=int, default=8)
    sp.add_argument("-n", "--count", type=int, default=128)
    sp.add_argument("-s", "--size", type=int, default=8 << 20)
    sp.add_argument("--prefix", default="bench/")
    sp = sub.add_parser("bench-get")
    sp.add_argument("bucket")
    sp.add_argument("-t", "--threads", type=int, default=8)
    sp.add_argument("--prefix", default="bench/")
    a = p.parse_args(argv)

    cli = Client()
    try:
        if a.cmd == "lb":
            for b in cli.buckets():
                print(b)
        elif a.cmd == "mb":
            cli.make_bucket(a.bucket)
        elif a.cmd == "rb":
            cli.remove_bucket(a.bucket)
        elif a.cmd == "put":
            if a.file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(a.file, "rb") as f:
                    data = f.read()
            cli.put(a.bucket, a.key, data)
        elif a.cmd == "get":
            out = sys.stdout.buffer if a.file == "-" else open(a.file + ".part", "wb")
            try:
                cli.get(a.bucket, a.key, sink=out.write)
            except BaseException:
                if a.file != "-":
                    out.close()
                    os.unlink(a.file + ".part")
                raise
            if a.file != "-":
                out.close()
                os.replace(a.file + ".part", a.file)
        elif a.cmd == "head":
            print(cli.head(a.bucket, a.key))
        elif a.cmd == "rm":
            cli.delete(a.bucket, a.key)
        elif a.cmd == "ls":
            for k, size in cli.list(a.bucket, a.prefix):
                print(k, size)
        elif a.cmd == "grep":
            marker = bytes.fromhex(a.hexmarker)
            if not marker:
                raise SystemExit("s3.py grep: empty marker")
            found, n = [], 0
            for k, _ in cli.list(a.bucket, a.prefix):
                n += 1
                # Streamed, keeping len(marker)-1 bytes across chunk boundaries.
                tail = [b""]
                hit = [False]

                def sink(chunk, tail=tail, hit=hit):
                    buf = tail[0] + chunk
                    if marker in buf:
                        hit[0] = True
                    tail[0] = buf[-(len(marker) - 1):] if len(marker) > 1 else b""

                cli.get(a.bucket, k, sink=sink)
                if hit[0]:
                    found.append(k)
            for k in found:
                print(f"s3.py grep: marker found in {a.bucket}/{k}", file=sys.stderr)
            print(f"s3.py grep: {n} objects searched, {len(found)} contain the marker", file=sys.stderr)
            return 1 if found else 0
        elif a.cmd == "bench-put":
            print(json.dumps(bench_put(cli, a.bucket, a.threads, a.count, a.size, a.prefix)))
        elif a.cmd == "bench-get":
            print(json.dumps(bench_get(cli, a.bucket, a.threads, a.prefix)))
    except S3Error as e:
        print(f"s3.py: {e}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError) as e:
        print(f"s3.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
