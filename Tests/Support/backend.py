#!/usr/bin/env python3
"""A backend process for fault-injection tests: killable, stoppable and restartable on the same port.

    backend.py NAME [PORT] [MODE]

Prints "listening PORT" once ready. Modes:
  named   answer every chunk with "NAME:<chunk>" (default)
  reset   accept, read the request, then reset the connection without answering
  wrong   answer every chunk with "-ERR wrong\\r\\n" (an open port that is not healthy)
  slow    like named, 100 ms late
"""
import socket
import struct
import sys
import threading
import time

name = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
mode = sys.argv[3] if len(sys.argv) > 3 else "named"
host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(512)
print("listening", server.getsockname()[1], flush=True)


def serve(conn):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            if mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            if mode == "slow":
                time.sleep(0.1)
            conn.sendall(b"-ERR wrong\r\n" if mode == "wrong" else name.encode() + b":" + data)
    except OSError:
        pass
    finally:
        conn.close()


while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
