#!/usr/bin/env python3
"""What a wasm module's code is made of, by crate: sums each function body's bytes under the
crate its (mangled) name starts with, and under two groups, the GPU runtime and the CPU backend.
Needs the name section, which the release profile strips; link one with it kept, e.g. the
WebGPU build (only the last crate is rebuilt):

  cargo rustc -p webtune-wasm --lib --crate-type cdylib --target wasm32-unknown-unknown \
    --release --no-default-features --features gpu -- -C strip=none
  python3 tests/bench/wasm_size.py $CARGO_TARGET_DIR/wasm32-unknown-unknown/release/webtune_wasm.wasm
"""
import collections
import re
import sys

# Crates by what they are for (a function can name several: the first group that matches wins).
GROUPS = [
    ("GPU runtime (cubecl, cubek, burn's cubecl backend, fusion and IR, wgpu)",
     r"cubecl|cubek|burn_cubecl|burn_fusion|burn_ir|pliron|wgpu|ciborium|combine|rustc_apfloat|naga"),
    ("CPU backend (burn-flex, gemm, macerator, webtune's fused kernels)",
     r"burn_flex|gemm|macerator|pulp|dyn_stack|kernels..cpu"),
]


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def functions(data):
    """(body size, name) for each function defined in the module."""
    i, imported, bodies, names = 8, 0, [], {}
    while i < len(data):
        sid = data[i]
        size, i = leb(data, i + 1)
        end = i + size
        if sid == 2:  # imports: functions among them shift the defined functions' indices
            n, j = leb(data, i)
            for _ in range(n):
                for _ in range(2):
                    l, j = leb(data, j)
                    j += l
                kind = data[j]
                j += 1
                if kind == 0:
                    _, j = leb(data, j)
                    imported += 1
                elif kind == 1:
                    j += 1
                    flags, j = leb(data, j)
                    _, j = leb(data, j)
                    if flags & 1:
                        _, j = leb(data, j)
                elif kind == 2:
                    flags, j = leb(data, j)
                    _, j = leb(data, j)
                    if flags & 1:
                        _, j = leb(data, j)
                elif kind == 3:
                    j += 2
        elif sid == 10:  # code
            n, j = leb(data, i)
            for _ in range(n):
                l, k = leb(data, j)
                bodies.append(l + (k - j))
                j = k + l
        elif sid == 0:  # custom: the name section's function names
            l, j = leb(data, i)
            if data[j:j + l] == b"name":
                j += l
                while j < end:
                    sub = data[j]
                    ssz, j = leb(data, j + 1)
                    if sub == 1:
                        n, k = leb(data, j)
                        for _ in range(n):
                            idx, k = leb(data, k)
                            l2, k = leb(data, k)
                            names[idx] = data[k:k + l2].decode("utf8", "replace")
                            k += l2
                    j += ssz
        i = end
    return [(size, names.get(imported + k, "?")) for k, size in enumerate(bodies)], bool(names)


def crate_of(name):
    m = re.match(r"_ZN(\d+)(.*)", name)
    if not m:  # demangled (wasm-bindgen's output) or unmangled
        return re.split(r"::|\[|<", name.lstrip("<&*"))[0] or name[:40]
    ident = m.group(2)[: int(m.group(1))]
    if ident.startswith("_$LT$"):  # <Type as Trait>::f: the type's crate
        t = re.sub(r"^(\$RF\$|\$BP\$|mut\$u20\$|\.\.|\$u5b\$|\$LP\$)+", "", ident[5:])
        return re.split(r"\.\.|\$", t)[0]
    return ident


def main():
    path = sys.argv[1]
    data = open(path, "rb").read()
    funcs, named = functions(data)
    if not named:
        sys.exit(f"{path}: no name section (link it with -C strip=none, see this file's doc)")
    total = sum(s for s, _ in funcs)
    by_crate, groups = collections.Counter(), collections.Counter()
    for size, name in funcs:
        by_crate[crate_of(name)] += size
        group = next((g for g, pat in GROUPS if re.search(pat, name)), "everything else")
        groups[group] += size
    print(f"{path}: {len(data) / 1e6:.2f} MB, code {total / 1e6:.2f} MB in {len(funcs)} functions")
    for g, size in groups.most_common():
        print(f"  {size / 1e6:6.2f} MB {100 * size / total:5.1f}%  {g}")
    print("largest crates:")
    for c, size in by_crate.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 20):
        print(f"  {size / 1e6:6.2f} MB  {c}")


if __name__ == "__main__":
    main()
