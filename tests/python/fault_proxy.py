"""An HTTP/1.1 proxy between dcpp and the test S3 server that injects faults (tests/s3).

  fault_proxy.py UPSTREAM_PORT MODE EVERY STATE_DIR [MATCH]

Listens on a free loopback port (written to STATE_DIR/port once it listens), forwards each
request to 127.0.0.1:UPSTREAM_PORT, and on every EVERY-th request whose path contains MATCH
(default `.distcp`: the data objects) injects MODE:
  drop   the response is cut halfway through its body (through its headers when it has none)
         and both connections are closed
  delay  the response is held back 2 s before it is sent
  503    the request never reaches the server: 503 SlowDown, connection closed
EVERY=1 injects on every such request (a fault that outlasts any retry). STATE_DIR/faults
counts the faults injected. Runs until killed.
"""
import os
import socket
import socketserver
import sys
import threading
import time

UPSTREAM = int(sys.argv[1])
MODE = sys.argv[2]
EVERY = int(sys.argv[3])
STATE = sys.argv[4]
MATCH = sys.argv[5] if len(sys.argv) > 5 else ".distcp"
lock = threading.Lock()
counter = {"data": 0, "faults": 0}


def read_message(sock, buffer, is_response, head_request=False):
    """One HTTP message from `sock` (headers, then a Content-Length body): (bytes, rest)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buffer
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if head_request:
        length = 0
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        upstream = socket.create_connection(("127.0.0.1", UPSTREAM))
        pending = b""
        try:
            while True:
                request, pending = read_message(client, pending, False)
                if request is None:
                    return
                line = request.split(b"\r\n", 1)[0].decode("latin-1")
                method, path = line.split(" ")[:2]
                inject = False
                if MATCH in path:
                    with lock:
                        counter["data"] += 1
                        inject = counter["data"] % EVERY == 0
                        if inject:
                            counter["faults"] += 1
                            with open(os.path.join(STATE, "faults"), "w") as f:
                                f.write(str(counter["faults"]))
                if inject and MODE == "503":
                    body = b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    return
                upstream.sendall(request)
                response, _ = read_message(upstream, b"", True, method == "HEAD")
                if response is None:
                    return
                if inject and MODE == "drop":
                    head_len = response.index(b"\r\n\r\n") + 4
                    body_len = len(response) - head_len
                    client.sendall(response[:head_len + body_len // 2] if body_len else response[:head_len // 2])
                    return
                if inject and MODE == "delay":
                    time.sleep(2)
                client.sendall(response)
        except OSError:
            return
        finally:
            upstream.close()
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


with Server(("127.0.0.1", 0), Handler) as server:
    with open(os.path.join(STATE, "port.tmp"), "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(os.path.join(STATE, "port.tmp"), os.path.join(STATE, "port"))
    server.serve_forever()
