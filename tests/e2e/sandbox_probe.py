"""Run inside ``weightvault sandbox``: try every way out, print what happened as JSON (one line).

Arguments: JSON with ``tcp`` (a host loopback port with a listener), ``udp`` (a host
UDP port with a listener), ``broker`` (the broker's URL), ``other`` (another port on the
broker's host), ``unix`` (a host Unix socket path) and ``abstract`` (an abstract socket
name bound on the host).
"""

import json
import socket
import sys
import urllib.request


def tcp(host: str, port: int, family: int = socket.AF_INET) -> str:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError as exc:
            return type(exc).__name__
        return "connected"


def udp(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(b"exfiltrated weights", (host, port))
            s.recv(16)
        except OSError as exc:
            return type(exc).__name__
        return "answered"


def unix(address: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect(address)
        except OSError as exc:
            return type(exc).__name__
        return "connected"


def main() -> None:
    a = json.loads(sys.argv[1])
    out = {
        "host_tcp": tcp("127.0.0.1", a["tcp"]),
        "host_tcp_v6": tcp("::1", a["tcp"], socket.AF_INET6),
        "broker_other_port": tcp("127.0.0.1", a["other"]),
        "outside": tcp("192.0.2.10", 443),
        "udp": udp("127.0.0.1", a["udp"]),
        "dns_udp": udp("8.8.8.8", 53),
        "unix": unix(a["unix"]),
        "abstract": unix("\0" + a["abstract"]),
    }
    try:
        socket.getaddrinfo("example.com", 443)
        out["dns"] = "resolved"
    except OSError as exc:
        out["dns"] = type(exc).__name__
    try:
        with urllib.request.urlopen(a["broker"] + "/v1/health", timeout=10) as r:
            out["broker"] = r.status
    except OSError as exc:
        out["broker"] = type(exc).__name__
    print(json.dumps(out), flush=True)


main()
