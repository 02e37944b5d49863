"""An OTLP/HTTP logs collector for the tests: decodes every request with the
official OpenTelemetry protobuf definitions (the `opentelemetry-proto`
package) and writes what it received, one JSON line per log record, to
`<dir>/records.ndjson`.

Usage: python otlp_collector.py DIR
Prints `port=<n>` once it listens on 127.0.0.1 (port 0: the kernel's
choice, or the one in DIR/port when it exists, so a restart keeps it).

What it answers is read from DIR/mode before every request:
  ok (or no file)   200, an empty ExportLogsServiceResponse
  status N [S]      HTTP N (with Retry-After: S when given)
  reject PREFIX     200 with partial_success: the log records whose
                    calllog.request_uuid starts with PREFIX are rejected
                    (counted, written to DIR/rejected.ndjson, not kept)
Every request is also logged to DIR/requests.ndjson (status, content
type, encoding, authorization, records).
"""

import gzip
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

DIR = sys.argv[1]
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    return getattr(v, kind)


def append(name, lines):
    if not lines:
        return
    with open(os.path.join(DIR, name), "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def mode():
    try:
        with open(os.path.join(DIR, "mode")) as f:
            return f.read().split()
    except FileNotFoundError:
        return ["ok"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type, retry_after=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        ctype = self.headers.get("Content-Type", "")
        req = ExportLogsServiceRequest()
        if ctype.startswith("application/json"):
            json_format.Parse(raw.decode("utf-8"), req)
        else:
            req.ParseFromString(raw)
        records = []
        for rl in req.resource_logs:
            resource = {kv.key: value(kv.value) for kv in rl.resource.attributes}
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    records.append({
                        "resource": resource,
                        "scope": sl.scope.name,
                        "time_unix_nano": lr.time_unix_nano,
                        "observed_time_unix_nano": lr.observed_time_unix_nano,
                        "severity_number": lr.severity_number,
                        "severity_text": lr.severity_text,
                        "body": value(lr.body),
                        "attributes": {kv.key: value(kv.value) for kv in lr.attributes},
                    })
        m = mode()
        status, retry_after, rejected = 200, None, []
        if m[0] == "status":
            status = int(m[1])
            retry_after = m[2] if len(m) > 2 else None
        elif m[0] == "reject":
            keep = []
            for r in records:
                uuid = r["attributes"].get("calllog.request_uuid", "")
                (rejected if uuid.startswith(m[1]) else keep).append(r)
            records = keep
        with LOCK:
            append("requests.ndjson", [{
                "status": status,
                "content_type": ctype,
                "content_encoding": self.headers.get("Content-Encoding"),
                "authorization": self.headers.get("Authorization"),
                "tenant": self.headers.get("X-Tenant"),
                "records": len(records) + len(rejected),
            }])
            if status == 200:
                append("records.ndjson", records)
                append("rejected.ndjson", rejected)
        resp = ExportLogsServiceResponse()
        if rejected:
            resp.partial_success.rejected_log_records = len(rejected)
            resp.partial_success.error_message = "%d log records refused by the test" % len(rejected)
        if status != 200:
            self.answer(status, b"not now", "text/plain", retry_after)
        elif ctype.startswith("application/json"):
            self.answer(200, json_format.MessageToJson(resp).encode(), "application/json")
        else:
            self.answer(200, resp.SerializeToString(), "application/x-protobuf")


def main():
    port_file = os.path.join(DIR, "port")
    port = int(open(port_file).read()) if os.path.exists(port_file) else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    print("port=%d" % server.server_address[1], flush=True)
    server.serve_forever()


main()
