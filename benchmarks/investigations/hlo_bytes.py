"""Where the "bytes accessed" of an optimized XLA HLO module go.

XLA's cost analysis (`compiled.cost_analysis()["bytes accessed"]`) sums, per
instruction of the scheduled module, the bytes of its operands and of its
output; it gives one number for the whole module. This tool recomputes that
sum from the text of the optimized HLO (`compiled.as_text()`, written by
`reference_compare.py --analyze --dump-hlo DIR`) and breaks it down: by
model region (encoder / decoder block parts, heads, loss, masking; forward
and backward apart, from the `op_name` metadata JAX writes from the name
stack), by op kind (fusion kind and the op at its root, or the plain
opcode), or by the `op_name` path itself. With several files it prints them
side by side, sorted by the difference between the first and the last.

    python benchmarks/investigations/hlo_bytes.py /tmp/hlo/ours_forward_backward.hlo.txt \\
        /tmp/hlo/reference_forward_backward.hlo.txt --by region
    python benchmarks/investigations/hlo_bytes.py A.hlo.txt --top 20   # the largest instructions

The rules follow XLA's `HloCostAnalysis`: parameters, constants,
tuples, get-tuple-element and bitcasts cost nothing; a fusion reads of each
operand only what its slices, dynamic slices and gathers take (the whole
operand otherwise) and writes its output; `slice`, `dynamic-slice` and
`gather` outside fusions read only their output's worth of the sliced
operand; a while loop's body and condition count once (XLA's static
analysis knows no trip counts). The total printed next to the breakdown is
the check: it should equal the `bytes accessed` of the cost analysis within
a few per cent.
"""

import argparse
import collections
import math
import re

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}
_SLICING = {"slice", "dynamic-slice", "gather"}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.*)$")
_CALLED = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def shape_bytes(shape):
    """Bytes of an HLO shape string; a tuple's are the sum of its arrays'."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _split_shape(rest):
    """`shape opcode(operands), attributes` -> (shape, opcode, operands, attributes)."""
    if rest.startswith("("):  # a tuple shape: up to its balancing parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                break
        shape, rest = rest[: i + 1], rest[i + 1:].lstrip()
    else:
        shape, rest = rest.split(" ", 1)
    opcode, rest = rest.split("(", 1)
    depth, i = 1, 0
    while depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    inside = rest[: i - 1]
    return shape, opcode, re.findall(r"%([\w.\-]+)", inside), inside, rest[i:]


Instruction = collections.namedtuple(
    "Instruction", "name shape opcode operands inside attributes op_name root"
)


def parse(text):
    """Computations of an HLO module: {name: [Instruction]}, and the entry's name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), [])
            if header.group(1):
                entry = header.group(2)
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            shape, opcode, operands, inside, attributes = _split_shape(match.group(3))
            op_name = _OP_NAME.search(attributes)
            current.append(Instruction(match.group(2), shape, opcode, operands, inside, attributes,
                                       op_name.group(1) if op_name else "", bool(match.group(1))))
    return computations, entry


def _parameter_read_bytes(fused, index):
    """Bytes a fusion reads of its operand `index`, as `HloCostAnalysis` counts them."""
    params = [i for i in fused if i.opcode == "parameter" and i.inside == str(index)]
    if not params:
        return None
    param = params[0]
    users = [i for i in fused if param.name in i.operands]
    if users and all(u.opcode in _SLICING and u.operands[0] == param.name for u in users):
        return min(sum(shape_bytes(u.shape) for u in users), shape_bytes(param.shape))
    return shape_bytes(param.shape)


def instruction_costs(text):
    """(Instruction, bytes accessed, kind) for every costed instruction of the module."""
    computations, entry = parse(text)
    shapes = {i.name: i.shape for body in computations.values() for i in body}
    out, seen, todo = [], set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for inst in computations[name]:
            if inst.opcode in ("while", "conditional", "call"):
                todo += [c for k, c in _CALLED.findall(inst.attributes) if k != "to_apply"
                         or inst.opcode == "call"]
                for branches in _BRANCHES.findall(inst.attributes):
                    todo += re.findall(r"%([\w.\-]+)", branches)
                continue
            if inst.opcode in _FREE:
                continue
            kind = inst.opcode
            if inst.opcode == "fusion":
                called = dict(_CALLED.findall(inst.attributes))["calls"]
                fused = computations[called]
                reads = [_parameter_read_bytes(fused, k) for k in range(len(inst.operands))]
                read = sum(r if r is not None else shape_bytes(shapes.get(o, ""))
                           for r, o in zip(reads, inst.operands))
                root = next(i for i in fused if i.root)
                heavy = sorted({i.opcode for i in fused} & {"dot", "reduce", "gather", "scatter",
                                                           "convolution", "sort", "reduce-window"})
                custom = "ynn" if "__ynn_fusion" in inst.attributes else ""
                fusion_kind = re.search(r"kind=k(\w+)", inst.attributes).group(1)
                kind = f"fusion {custom or fusion_kind}: {root.opcode}" + (
                    f" [{','.join(heavy)}]" if heavy and heavy != [root.opcode] else "")
            elif inst.opcode in _SLICING:
                read = shape_bytes(inst.shape) + sum(
                    shape_bytes(shapes.get(o, "")) for o in inst.operands[1:])
            else:
                read = sum(shape_bytes(shapes.get(o, "")) for o in inst.operands)
            out.append((inst, read + shape_bytes(inst.shape), kind))
    return out


# Model regions from the `op_name` path: (pattern, region). The first match
# wins; the names are ours (keras_m3ae) and the reference Flax M3AE's.
_BLOCK = r"(?:transformer/)?[Bb]lock_\d+/"
REGIONS = [
    (rf"encoder/{_BLOCK}(?:norm\d|LayerNorm_\d)", "encoder block: layer norms"),
    (rf"encoder/{_BLOCK}(?:attention|Attention_\d)", "encoder block: attention"),
    # Ours applies GELU in the block's own scope (`block_N/mul`, `.../erfc`),
    # the reference inside its MLP module: MLP, GELU and residual adds are
    # one region so that the two line up.
    (rf"encoder/{_BLOCK}", "encoder block: MLP, GELU, residual"),
    (r"encoder/(?:norm|LayerNorm_\d)/", "encoder final norm"),
    (rf"decoder/{_BLOCK}(?:norm\d|LayerNorm_\d)", "decoder block: layer norms"),
    (rf"decoder/{_BLOCK}(?:attention|Attention_\d)", "decoder block: attention"),
    (rf"decoder/{_BLOCK}", "decoder block: MLP, GELU, residual"),
    (r"decoder/(?:transformer/norm|LayerNorm_\d)/", "decoder final norm"),
    (r"decoder[/_](?:text_head|text_output)", "text head (logits)"),
    (r"decoder[/_](?:image_head|image_output)", "image head"),
    (r"decoder[/_]input_projection", "decoder input projection"),
    (r"log_softmax|cross_entropy|text_loss", "text loss (log-softmax)"),
    (r"image_loss", "image loss"),
    (r"take_along_axis|gather|scatter|argsort|sort|decoder/jit\(_where",
     "masking, gathers, mask tokens"),
    (r"_uniform|threefry|random|_bits", "random numbers"),
    (r"token_embedding|text_embedding|patch_embedding|image_embedding|position|cls_token",
     "embeddings"),
]


def _unwrap(op_name):
    return re.sub(r"(transpose|jvp|vmap)\(", "", op_name).replace(")", "")


def region(inst):
    path = _unwrap(inst.op_name)
    for pattern, name in REGIONS:
        if re.search(pattern, path):
            break
    else:
        name = "other: " + (path.rsplit("/", 1)[-1] or inst.opcode)
    backward = "transpose(" in inst.op_name
    return f"{'bwd' if backward else 'fwd'} {name}"


def op_path(inst, depth):
    """The `op_name` path without the jit/jvp/transpose wrappers, block numbers folded."""
    path = re.sub(r"[Bb]lock_\d+", "block_N", _unwrap(inst.op_name))
    parts = [p for p in path.split("/") if p and not p.startswith("jit(loss_fn")]
    return ("bwd " if "transpose(" in inst.op_name else "fwd ") + "/".join(parts[:depth])


def breakdown(costs, by, depth=3):
    totals = collections.Counter()
    for inst, nbytes, kind in costs:
        key = {"region": lambda: region(inst), "kind": lambda: kind,
               "op": lambda: op_path(inst, depth)}[by]()
        totals[key] += nbytes
    return totals


def region_times(text, xplane_path, calls=1):
    """Seconds per call by model region, from a `jax.profiler` trace of the module.

    XLA's CPU runtime records one event per executed instruction (thunk),
    named as in the optimized HLO `text`; events with other names (the
    executor, Python) are left out. Returns (Counter {region: seconds per
    call}, Counter {trace line (thread): seconds per call}).
    """
    from jax.profiler import ProfileData

    instructions = {inst.name: inst for inst, _, _ in instruction_costs(text)}
    regions, threads = collections.Counter(), collections.Counter()
    for plane in ProfileData.from_file(xplane_path).planes:
        for line in plane.lines:
            for event in line.events:
                inst = instructions.get(event.name)
                if inst is not None:
                    regions[region(inst)] += event.duration_ns / 1e9 / calls
                    threads[line.name] += event.duration_ns / 1e9 / calls
    return regions, threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+",
                        help="optimized HLO texts; with several, rows sort by first minus last")
    parser.add_argument("--by", default="region", choices=("region", "kind", "op"))
    parser.add_argument("--depth", type=int, default=3, help="path components for --by op")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--top", type=int, default=0,
                        help="instead: the N instructions with the most bytes, per file")
    args = parser.parse_args(argv)
    costs = [instruction_costs(open(f).read()) for f in args.files]
    if args.top:
        for f, c in zip(args.files, costs):
            print(f"== {f}")
            for inst, nbytes, kind in sorted(c, key=lambda x: -x[1])[: args.top]:
                print(f"{nbytes / 1e6:9.1f} MB  {kind:40.40} {inst.shape[:40]:40} {op_path(inst, 9)}")
        return
    tables = [breakdown(c, args.by, args.depth) for c in costs]
    several = len(tables) > 1

    def row(values):
        diff = f" | {values[0] - values[-1]:+.0f}" if several else ""
        return " | ".join(f"{v:.0f}" for v in values) + diff + " |"

    keys = sorted(set().union(*tables), key=lambda k: -abs(tables[0][k] - tables[-1][k]))
    names = [f.rsplit("/", 1)[-1].split(".")[0] for f in args.files]
    print(f"| {args.by} | " + " | ".join(f"{n} MB" for n in names)
          + (" | first - last MB |" if several else " |"))
    print("|---" * (len(tables) + 1 + several) + "|")
    for key in keys[: args.rows]:
        print(f"| {key} | " + row([t[key] / 1e6 for t in tables]))
    rest = keys[args.rows:]
    if rest:
        print(f"| ({len(rest)} more rows) | " + row([sum(t[k] for k in rest) / 1e6 for t in tables]))
    print("| **total** | " + row([sum(t.values()) / 1e6 for t in tables]))

if __name__ == "__main__":
    main()
