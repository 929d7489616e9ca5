#!/usr/bin/env python3
"""The top-level module graph of src/ (an edge A -> B: a `crate::B` path in a file of module A,
tests and comments left out), checked against the layers below: a module may import modules of
its own layer or lower, never higher, and no import cycle may form. Prints the graph; exits 1 on
a cycle or an upward import. With --files, the same for files: every file of src/ a node, an
edge A -> B when file A names an item of file B (a `crate::`, `super::` or `self::` path; a file's
own ancestors are not counted: a child using its parent's items is the usual Rust shape); prints
each cycle with the names that tie it. Run by scripts/test.sh, both ways.

Layers, lowest first (docs/design.md, "Layers"):
  0 types                                        leaf data shared by everyone
  1 error, metrics, config, alloc, logging       names, one error type, one config tree
  2 providers, accounts, cache, ratelimit, conn  the services' parts
  3 rentals, auth, events                        domain logic over them
  4 state, background                            the services of one daemon; its periodic work
  5 service                                      typed operations every carrier calls
  6 api                                          routes, handlers, render caches, respond
  7 server                                       listeners, TLS, serving, drain
  8 cli                                          the binary's commands
(src/testkit.rs and src/loadkit.rs are not modules of the library: load tools and tests include them by path.)
"""
import os
import re
import sys

LAYERS = [
    ["types"],
    ["error", "metrics", "config", "alloc", "logging"],
    ["providers", "accounts", "cache", "ratelimit", "conn"],
    ["rentals", "auth", "events", "agents"],
    ["state", "background"],
    ["service"],
    ["api"],
    ["server"],
    ["cli"],
]
LAYER = {m: i for i, names in enumerate(LAYERS) for m in names}


def strip_tests(text):
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def graph(src):
    mods = set()
    for n in os.listdir(src):
        if n.endswith(".rs") and n not in ("lib.rs", "main.rs", "testkit.rs", "loadkit.rs"):
            mods.add(n[:-3])
        elif os.path.isdir(os.path.join(src, n)) and n != "bin":
            mods.add(n)
    edges = {m: set() for m in mods}
    for m in mods:
        paths = [os.path.join(src, m + ".rs")] if os.path.isfile(os.path.join(src, m + ".rs")) else []
        for root, _, files in os.walk(os.path.join(src, m)):
            paths += [os.path.join(root, f) for f in files if f.endswith(".rs")]
        for p in paths:
            text = re.sub(r"//.*", "", strip_tests(open(p, encoding="utf-8").read()))
            for b in re.findall(r"crate::(\w+)", text):
                if b in mods and b != m:
                    edges[m].add(b)
            for grp in re.findall(r"crate::\{([^}]*)\}", text):
                for b in re.findall(r"(?:^|,)\s*(\w+)", grp):
                    if b in mods and b != m:
                        edges[m].add(b)
    return mods, edges


def cycles(mods, edges):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return [c for c in comps if len(c) > 1]


def file_modules(src):
    """Module path (a tuple) -> file, for every file of the library (src/bin left out)."""
    out = {}
    for root, _, names in os.walk(src):
        rel = os.path.relpath(root, src)
        parts = [] if rel == "." else rel.split(os.sep)
        if parts[:1] == ["bin"]:
            continue
        for n in names:
            if not n.endswith(".rs") or (not parts and n in ("main.rs", "testkit.rs", "loadkit.rs")):
                continue
            mp = tuple(parts) if n in ("mod.rs", "lib.rs") else tuple(parts + [n[:-3]])
            out[mp] = os.path.relpath(os.path.join(root, n), src)
    return out


def expand(path):
    """`a::{b, c::{d}}` -> [`a::b`, `a::c::d`]."""
    m = re.search(r"\{", path)
    if not m:
        return [path]
    head, depth, j = path[:m.start()], 1, m.end()
    while j < len(path) and depth:
        depth += {"{": 1, "}": -1}.get(path[j], 0)
        j += 1
    inner, items, cur, depth = path[m.end():j - 1], [], "", 0
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    return [head + e for it in items if it.strip() for e in expand(it.strip())]


def file_graph(src):
    mods = file_modules(src)
    edges = {f: {} for f in mods.values()}
    for mp, f in mods.items():
        text = re.sub(r"//[^\n]*", "", strip_tests(open(os.path.join(src, f), encoding="utf-8").read()))
        text = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text)
        paths = [e for u in re.findall(r"\buse\s+([^;]+);", text) for e in expand(re.sub(r"\s+", "", u))]
        paths += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", re.sub(r"\buse\s+[^;]+;", "", text))
        for path in paths:
            segs = [x for x in path.split("::") if x]
            if not segs or segs[0] not in ("crate", "super", "self"):
                continue
            base = list(mp)  # `self` is the file's own module, each `super` its parent
            while segs and segs[0] in ("super", "self"):
                if segs.pop(0) == "super":
                    base = base[:-1]
            if segs and segs[0] == "crate":
                base, segs = [], segs[1:]
            full = tuple(base + [re.sub(r"\s+as\s+\w+$", "", x) for x in segs])
            # the longest prefix that is a file; the next segment is the name used
            for k in range(len(full), 0, -1):
                tgt = mods.get(full[:k])
                if tgt and tgt != f and full[:k] != mp[:k]:
                    name = full[k] if k < len(full) else full[k - 1]
                    edges[f].setdefault(tgt, set()).add(name)
                    break
    return mods, edges


def main_files(src):
    mods, edges = file_graph(src)
    names = set(mods.values())
    comps = cycles(names, {a: set(b) for a, b in edges.items()})
    for c in comps:
        print(f"cycle of {len(c)} files: {' '.join(c)}")
        for a in c:
            for b in sorted(edges[a]):
                if b in c:
                    print(f"  {a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    print(f"files={len(names)} cycles={len(comps)}")
    sys.exit(1 if comps else 0)


def main():
    args = [a for a in sys.argv[1:] if a != "--files"]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    if "--files" in sys.argv:
        main_files(src)
    mods, edges = graph(src)
    bad = []
    for m in sorted(mods, key=lambda m: (LAYER.get(m, 99), m)):
        print(f"{LAYER.get(m, '?')} {m:10} -> {', '.join(sorted(edges[m])) or '-'}")
        if m not in LAYER:
            bad.append(f"module `{m}` has no layer: add it to LAYERS in scripts/modgraph.py")
        for b in sorted(edges[m]):
            if m in LAYER and b in LAYER and LAYER[b] > LAYER[m]:
                bad.append(f"`{m}` (layer {LAYER[m]}) imports `{b}` (layer {LAYER[b]}), a higher layer")
    for c in cycles(mods, edges):
        bad.append(f"import cycle: {' -> '.join(c)}")
    for b in bad:
        print(f"modgraph: {b}", file=sys.stderr)
    print(f"modules={len(mods)} problems={len(bad)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
