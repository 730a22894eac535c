#!/usr/bin/env python3
"""A model of the vault's new-value writes, for trying store layouts cheaply.

It inserts ROWS file rows (three values each, with a subject) into a SQLite
file with the vault's four B-trees (`tokens`, its blind index, and
`subject_links` with its by-token index), in commits of BATCH rows, with
the writer's settings (WAL, synchronous=FULL, secure_delete, a bounded
page cache), and prints rows per second and the bytes the process wrote.
Keys are random, as the vault's are (keyed hashes). No vault code runs:
the figures show what SQLite itself costs for each layout, not the vault.

    python3 benches/store-layout.py                    # the vault's layout
    LAYOUT=sorted python3 benches/store-layout.py      # each commit in token order
    LAYOUT=split python3 benches/store-layout.py       # four tables, each filled in its own key order
    LAYOUT=recent MERGE=65536 python3 benches/store-layout.py  # a small table, merged into the split ones
    PAGE=1024 CACHE_KIB=16384 BATCH=32768 ROWS=200000 AUTOCHECKPOINT=50000 SYNC=NORMAL ...
"""
import hashlib
import os
import sqlite3
import tempfile
import time

ROWS = int(os.environ.get("ROWS", "200000"))
BATCH = int(os.environ.get("BATCH", "4096"))
PAGE = int(os.environ.get("PAGE", "4096"))
CACHE_KIB = int(os.environ.get("CACHE_KIB", "4096"))
LAYOUT = os.environ.get("LAYOUT", "vault")
CLASSES = ("email", "phone", "name")

VAULT = """
CREATE TABLE tokens (namespace TEXT NOT NULL, token TEXT NOT NULL, class TEXT NOT NULL,
    key_version INTEGER NOT NULL, sealed BLOB NOT NULL, blind_index BLOB,
    created_at INTEGER NOT NULL, used_day INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, token)) WITHOUT ROWID;
CREATE UNIQUE INDEX tokens_by_blind_index ON tokens (namespace, class, blind_index)
    WHERE blind_index IS NOT NULL;
CREATE TABLE subject_links (namespace TEXT NOT NULL, subject_hash BLOB NOT NULL,
    token TEXT NOT NULL, linked_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, subject_hash, token)) WITHOUT ROWID;
CREATE INDEX subject_links_by_token ON subject_links (namespace, token);
"""
# The same mappings as four tables without secondary indexes, so that each
# can be filled in its own key order.
SPLIT = """
DROP INDEX tokens_by_blind_index;
DROP INDEX subject_links_by_token;
CREATE TABLE blind (namespace TEXT NOT NULL, class TEXT NOT NULL, blind_index BLOB NOT NULL,
    token TEXT NOT NULL, PRIMARY KEY (namespace, class, blind_index)) WITHOUT ROWID;
CREATE TABLE links_by_token (namespace TEXT NOT NULL, token TEXT NOT NULL,
    subject_hash BLOB NOT NULL, PRIMARY KEY (namespace, token, subject_hash)) WITHOUT ROWID;
"""


def digest(*parts):
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def written():
    with open("/proc/self/io") as io:
        return int(io.read().split("write_bytes: ")[1].split()[0])


def batch_rows(first):
    rows = []
    for r in range(first, min(ROWS, first + BATCH)):
        subject = digest("subject", r)
        for c in CLASSES:
            token = digest("token", r, c).hex()[:24]
            rows.append((token, c, os.urandom(60), digest("blind", r, c), subject))
    return rows


def insert(db, rows):
    if LAYOUT == "split":
        rows.sort(key=lambda x: x[0])
        db.executemany(
            "INSERT INTO tokens (namespace, token, class, key_version, sealed, created_at)"
            " VALUES ('retail', ?, ?, 1, ?, 0)", [(t, c, s) for t, c, s, _, _ in rows])
        db.executemany("INSERT INTO links_by_token VALUES ('retail', ?, ?)",
                       [(t, subj) for t, _, _, _, subj in rows])
        rows.sort(key=lambda x: (x[1], x[3]))
        db.executemany("INSERT INTO blind VALUES ('retail', ?, ?, ?)",
                       [(c, b, t) for t, c, _, b, _ in rows])
        rows.sort(key=lambda x: (x[4], x[0]))
    else:
        if LAYOUT == "sorted":
            rows.sort(key=lambda x: x[0])
        db.executemany(
            "INSERT INTO tokens (namespace, token, class, key_version, sealed, blind_index, created_at)"
            " VALUES ('retail', ?, ?, 1, ?, ?, 0)", [(t, c, s, b) for t, c, s, b, _ in rows])
    db.executemany("INSERT INTO subject_links VALUES ('retail', ?, ?, 0)",
                   [(subj, t) for t, _, _, _, subj in rows])


RECENT = """
CREATE TABLE recent_tokens (namespace TEXT NOT NULL, token TEXT NOT NULL, class TEXT NOT NULL,
    key_version INTEGER NOT NULL, sealed BLOB NOT NULL, blind_index BLOB NOT NULL,
    subject_hash BLOB NOT NULL, PRIMARY KEY (namespace, token)) WITHOUT ROWID;
CREATE UNIQUE INDEX recent_by_blind_index ON recent_tokens (namespace, class, blind_index);
"""
MERGE = int(os.environ.get("MERGE", "65536"))


def insert_recent(db, rows):
    """New rows land in a small table; every MERGE rows they move to the
    four split tables, each filled in its own key order."""
    rows.sort(key=lambda x: (x[1], x[3]))
    for _, c, _, b, _ in rows:  # the uniqueness check against the large tree
        db.execute("SELECT token FROM blind WHERE namespace = 'retail' AND class = ?"
                   " AND blind_index = ?", (c, b)).fetchone()
    db.executemany("INSERT INTO recent_tokens VALUES ('retail', ?, ?, 1, ?, ?, ?)", rows)


def merge_recent(db):
    db.execute("BEGIN")
    db.execute("INSERT INTO tokens (namespace, token, class, key_version, sealed, created_at)"
               " SELECT namespace, token, class, key_version, sealed, 0 FROM recent_tokens"
               " ORDER BY namespace, token")
    db.execute("INSERT INTO links_by_token SELECT namespace, token, subject_hash"
               " FROM recent_tokens ORDER BY namespace, token, subject_hash")
    db.execute("INSERT INTO blind SELECT namespace, class, blind_index, token"
               " FROM recent_tokens ORDER BY namespace, class, blind_index")
    db.execute("INSERT INTO subject_links SELECT namespace, subject_hash, token, 0"
               " FROM recent_tokens ORDER BY namespace, subject_hash, token")
    db.execute("DELETE FROM recent_tokens")
    db.execute("COMMIT")


def main():
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "model.db")
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"PRAGMA page_size={PAGE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={os.environ.get('SYNC', 'FULL')}")
        db.execute("PRAGMA secure_delete=ON")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if "AUTOCHECKPOINT" in os.environ:
            db.execute(f"PRAGMA wal_autocheckpoint={os.environ['AUTOCHECKPOINT']}")
        db.executescript(VAULT)
        if LAYOUT in ("split", "recent"):
            db.executescript(SPLIT)
        if LAYOUT == "recent":
            db.executescript(RECENT)
        start, before = time.time(), written()
        for first in range(0, ROWS, BATCH):
            rows = batch_rows(first)
            db.execute("BEGIN")
            if LAYOUT == "recent":
                insert_recent(db, rows)
            else:
                insert(db, rows)
            db.execute("COMMIT")
            if LAYOUT == "recent" and (first + BATCH) % MERGE < BATCH:
                merge_recent(db)
        if LAYOUT == "recent":
            merge_recent(db)
        secs = time.time() - start
        print(f"layout={LAYOUT}{f' merge={MERGE}' if LAYOUT == 'recent' else ''} page={PAGE} cache={CACHE_KIB}KiB batch={BATCH} rows={ROWS}: "
              f"{ROWS / secs:.0f} rows/s, wrote {(written() - before) / 1e9:.1f} GB, "
              f"file {os.path.getsize(path) / 1e6:.0f} MB, SQLite {sqlite3.sqlite_version}")


main()
