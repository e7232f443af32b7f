#!/usr/bin/python3
"""A real libtorrent peer for indexswarm's interop tests and benchmarks.

Run with Debian's /usr/bin/python3 (python3-libtorrent lives there).

  lt_peer.py info T.torrent                  -> JSON: info_hash, files, pieces
  lt_peer.py check T.torrent PARENT          -> JSON: libtorrent's own check of the data
  lt_peer.py make DIR OUT.torrent [--align] [--piece-length N] [--announce URL]
  lt_peer.py seed T.torrent PARENT --port P [--peer H:P]... [--upload-limit B]
  lt_peer.py leech T.torrent PARENT --port P [--peer H:P]... [--timeout S] [--seed-after] [--report-peers]

seed and leech take --ssl-port P --ssl-cert C --ssl-key K for SSL torrents
(the torrent's info.ssl-cert is the root): libtorrent then listens for TLS
peers on P too and presents certificate C.

`seed` runs until killed; `leech` exits 0 once the download is complete and
prints a JSON line with the time taken. Settings follow
../shared/REFERENCE_PEERS.md: uTP off (it crawls on loopback), multiple
connections per IP allowed (every peer is 127.0.0.1), no DHT/LSD/UPnP, and
rate limits applied to local peers too.
"""
import argparse
import json
import os
import sys
import time

import libtorrent as lt


def session(port, upload_limit=0, download_limit=0, high_performance=True, bind="127.0.0.1", ssl_port=0):
    pack = lt.high_performance_seed() if high_performance else lt.default_settings()
    listen = "%s:%d" % (bind, port)
    if ssl_port:
        # An "s" suffix makes a TLS listen socket (SSL torrents).
        listen += ",%s:%ds" % (bind, ssl_port)
    pack.update({
        "listen_interfaces": listen,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "upload_rate_limit": upload_limit,
        "download_rate_limit": download_limit,
        "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
    })
    ses = lt.session(pack)
    if upload_limit or download_limit:
        # Local peers are exempt from rate limits unless mapped to the global class.
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(f)
    return ses


def add(ses, torrent, parent, peers, seed_mode=False, ssl=None):
    ti = lt.torrent_info(torrent)
    params = lt.add_torrent_params()
    params.ti = ti
    params.save_path = parent
    if seed_mode:
        params.flags |= lt.torrent_flags.seed_mode
    h = ses.add_torrent(params)
    if ssl:
        # Our certificate for this SSL torrent (no DH file: ECDHE only).
        h.set_ssl_certificate(ssl[0], ssl[1], "")
    for p in peers:
        host, port = p.rsplit(":", 1)
        h.connect_peer((host, int(port)))
    return h


def cmd_info(a):
    ti = lt.torrent_info(a.torrent)
    fs = ti.files()
    files = []
    for i in range(fs.num_files()):
        files.append({"path": fs.file_path(i).split(os.sep), "length": fs.file_size(i),
                      "pad": bool(fs.file_flags(i) & lt.file_storage.flag_pad_file)})
    print(json.dumps({"info_hash": str(ti.info_hashes().v1), "pieces": ti.num_pieces(),
                      "piece_length": ti.piece_length(), "total_length": ti.total_size(),
                      "name": ti.name(), "files": files}))


def cmd_check(a):
    # Added without resume data, libtorrent hashes whatever is on disk and
    # posts torrent_checked_alert when done.
    ses = session(0)
    h = add(ses, a.torrent, a.parent, [])
    deadline = time.time() + 300
    done = False
    while time.time() < deadline and not done:
        ses.wait_for_alert(500)
        for al in ses.pop_alerts():
            if isinstance(al, lt.torrent_checked_alert):
                done = True
    s = h.status()
    print(json.dumps({"checked": done, "valid_pieces": s.num_pieces, "pieces": h.torrent_file().num_pieces()}))
    return 0 if done else 1


def cmd_make(a):
    fs = lt.file_storage()
    lt.add_files(fs, a.dir)
    flags = lt.create_torrent.optimize_alignment if a.align else 0
    ct = lt.create_torrent(fs, a.piece_length, flags=flags)
    if a.announce:
        ct.add_tracker(a.announce)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(a.dir)))
    data = lt.bencode(ct.generate())
    with open(a.out, "wb") as f:
        f.write(data)
    print(str(lt.torrent_info(a.out).info_hashes().v1))


def ssl_of(a):
    return (a.ssl_cert, a.ssl_key) if a.ssl_cert else None


def cmd_seed(a):
    ses = session(a.port, upload_limit=a.upload_limit, bind=a.bind, ssl_port=a.ssl_port)
    add(ses, a.torrent, a.parent, a.peer, seed_mode=a.seed_mode, ssl=ssl_of(a))
    print(json.dumps({"listening": ses.listen_port(), "ssl_port": a.ssl_port}), flush=True)
    while True:
        time.sleep(1)


def cmd_leech(a):
    ses = session(a.port, upload_limit=a.upload_limit, download_limit=a.download_limit, bind=a.bind,
                  ssl_port=a.ssl_port)
    start = time.time()
    h = add(ses, a.torrent, a.parent, a.peer, ssl=ssl_of(a))
    deadline = start + a.timeout
    last_report = 0.0
    while time.time() < deadline:
        if a.report_peers and time.time() - last_report >= 0.5:
            last_report = time.time()
            # peer_info.source flags: 1 tracker, 2 dht, 4 pex, 8 lsd, 16 resume, 32 incoming.
            peers = [{"addr": "%s:%d" % p.ip, "pex": bool(p.source & 4)} for p in h.get_peer_info()]
            print(json.dumps({"peers": peers}), flush=True)
        s = h.status()
        if s.is_seeding:
            took = time.time() - start
            print(json.dumps({"complete": True, "seconds": took, "downloaded": s.total_payload_download}), flush=True)
            if a.seed_after:
                while True:
                    time.sleep(1)
            return 0
        time.sleep(0.05)
    s = h.status()
    print(json.dumps({"complete": False, "progress": s.progress, "peers": s.num_peers}), flush=True)
    return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info"); i.add_argument("torrent")
    c = sub.add_parser("check"); c.add_argument("torrent"); c.add_argument("parent")
    m = sub.add_parser("make"); m.add_argument("dir"); m.add_argument("out")
    m.add_argument("--align", action="store_true"); m.add_argument("--piece-length", type=int, default=0)
    m.add_argument("--announce")
    for name in ("seed", "leech"):
        s = sub.add_parser(name)
        s.add_argument("torrent"); s.add_argument("parent")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--peer", action="append", default=[])
        s.add_argument("--upload-limit", type=int, default=0)
        s.add_argument("--download-limit", type=int, default=0)
        s.add_argument("--timeout", type=float, default=120)
        s.add_argument("--seed-after", action="store_true")
        s.add_argument("--seed-mode", action="store_true")
        s.add_argument("--bind", default="127.0.0.1")
        s.add_argument("--report-peers", action="store_true",
                       help="leech: print the connected peers (and whether PEX named them) twice a second")
        s.add_argument("--ssl-port", type=int, default=0, help="also listen for TLS peers here (SSL torrents)")
        s.add_argument("--ssl-cert", help="our certificate for SSL torrents (PEM)")
        s.add_argument("--ssl-key", help="its private key (PEM)")
    a = p.parse_args()
    return {"info": cmd_info, "check": cmd_check, "make": cmd_make, "seed": cmd_seed, "leech": cmd_leech}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
