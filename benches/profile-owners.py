#!/usr/bin/env python3
"""Who owns the vault's CPU in a profile of the egress benchmark.

    PERF_OUT=/tmp/vault.data TOKENVAULT_BIN=<build with frame pointers> \\
        DURATION=10s ROUNDS=1 bash benches/egress-vs-nginx.sh
    perf script -i /tmp/vault.data -F comm,tid,ip,sym,dso > /tmp/vault.txt
    python3 benches/profile-owners.py /tmp/vault.txt

Each sample belongs to the innermost frame, from the leaf up, that is
SQLite, the vault's own code, the HTTP client (reqwest, hyper), the HTTP
server (actix) or the runtime (tokio, mio). Libraries the code calls
(serde_json, ring, moka, the allocator, libc) and the kernel count for
their caller; the kernel share of each owner is shown beside it. The
vault's own samples are then split by the part of the request they serve.
"""
import collections
import re
import sys

OWNERS = [
    ("SQLite (the store's commits and reads)", re.compile(r"sqlite3")),
    ("the vault's own code", re.compile(r"tokenvault::")),
    ("HTTP client (reqwest, hyper)", re.compile(r"reqwest::|hyper::|hyper_util::|h2::|tower")),
    ("HTTP server (actix)", re.compile(r"actix")),
    ("runtime (tokio, mio)", re.compile(r"tokio::|mio::")),
]
PARTS = [
    ("plan: strict check, walk, selection, scan", "RewritePlan::build"),
    ("rewrite", "Rewrite::apply"),
    ("engine: tokenize (normalize, HMAC, cache)", "tokenize_audited"),
    ("engine: the rest (records, refusals)", "tokenvault::vault::"),
    ("store writer, outside SQLite (records' MACs, encoding)", "Writer::run"),
    ("authentication", "tokenvault::http::auth"),
    ("HTTP handler and egress glue", "tokenvault::"),
]


def samples(path):
    stack = None
    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line.strip():
                if stack is not None:
                    yield stack
                stack = None
            elif line[0] in " \t":
                parts = line.strip().split(" ", 1)
                stack.append(parts[1] if len(parts) > 1 else "?")
            else:
                stack = []
    if stack is not None:
        yield stack


def main(path):
    owners, kernel, parts = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for stack in samples(path):
        total += 1
        owner = "other (kernel and thread start, no owner frame)"
        for frame in stack:
            found = next((name for name, rx in OWNERS if rx.search(frame)), None)
            if found:
                owner = found
                break
        owners[owner] += 1
        if stack and "[kernel.kallsyms]" in stack[0]:
            kernel[owner] += 1
        if owner == OWNERS[1][0]:
            part = next(name for name, mark in PARTS if any(mark in f for f in stack))
            parts[part] += 1
    print("| owner | share of the vault's CPU samples | of which in the kernel |")
    print("| --- | ---: | ---: |")
    for name, count in owners.most_common():
        print(f"| {name} | {100 * count / total:.1f}% | {100 * kernel[name] / total:.1f}% |")
    print()
    print("| the vault's own code, by part | share of all samples |")
    print("| --- | ---: |")
    for name, count in parts.most_common():
        print(f"| {name} | {100 * count / total:.1f}% |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main(sys.argv[1])
