#!/usr/bin/env python3
"""Fails if the runtime's modules import each other in a cycle.

Each file of runtime/src is a module (gpu/mod.rs is `gpu`, gpu/memory.rs
`gpu::memory`); an edge A -> B is a `crate::B` path in A's code outside
its tests (`#[cfg(test)]` modules and the test-only `test_common`). A
module's use of its parent through `super::` is its own business, not an
edge. Prints the graph's cycles, or that there are none.
"""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "runtime" / "src"
mods = {}
for f in sorted(src.rglob("*.rs")):
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts == ["lib"]:
        continue
    mods["::".join(parts)] = f.read_text()


def code(text):
    # Drop #[cfg(test)] mod blocks (to the end of the file: they come last
    # in this crate) and comments.
    i = text.find("#[cfg(test)]\nmod tests")
    if i >= 0:
        text = text[:i]
    return re.sub(r"//[^\n]*", "", text)


edges = {m: set() for m in mods}
for m, text in mods.items():
    for a, b in re.findall(r"crate::([a-z_]+)(?:::([a-z_]+))?", code(text)):
        dep = f"{a}::{b}" if b and f"{a}::{b}" in mods else a
        if dep in mods and dep != m:
            edges[m].add(dep)

cycles = []
state = {}
stack = []


def visit(m):
    state[m] = 1
    stack.append(m)
    for d in sorted(edges[m]):
        if state.get(d) == 1:
            cycles.append(stack[stack.index(d):] + [d])
        elif d not in state:
            visit(d)
    stack.pop()
    state[m] = 2


for m in sorted(mods):
    if m not in state:
        visit(m)
if cycles:
    for c in cycles:
        print("module-cycles: " + " -> ".join(c))
    sys.exit(1)
print(f"module-cycles: {len(mods)} runtime modules, {sum(map(len, edges.values()))} imports, no cycle")
