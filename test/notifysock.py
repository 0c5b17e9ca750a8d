#!/usr/bin/env python3
"""Stands in for systemd's notification socket: binds an AF_UNIX datagram
socket at PATH (a leading @: the abstract namespace) and appends each
message to OUT as one line "<sender pid> <message, newlines as spaces>"
(the sender's pid from SO_PASSCRED, as systemd checks NotifyAccess=main).
usage: notifysock.py PATH OUT"""
import os
import socket
import struct
import sys


def main():
    path, out = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind("\0" + path[1:] if path.startswith("@") else path)
    open(out + ".ready", "w").close()
    while True:
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = "?"
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = str(struct.unpack("iII", data[:12])[0])
        with open(out, "a") as f:
            f.write("%s %s\n" % (pid, msg.decode(errors="replace").replace("\n", " ")))


if __name__ == "__main__":
    main()
