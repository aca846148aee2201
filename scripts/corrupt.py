#!/usr/bin/env python3
"""Build the corrupt-dataset fixtures under fixtures/corrupt/ (Python 3 standard library only).

Driven by scripts/make-corrupt-fixtures.sh; each subcommand is also usable on its own:

    python3 scripts/corrupt.py tree OUT            # write the base source tree
    python3 scripts/corrupt.py layout SHARD        # print a shard's regions (format-spec/shard.md)
    python3 scripts/corrupt.py apply CASE DIR [--other OTHER_DATASET]
                                                   # damage the dataset copy in DIR as CASE says
    python3 scripts/corrupt.py v1-manifest DIR     # rewrite DIR's format-version-2 manifest as
                                                   # the version-1 manifest of the same shards

The base tree is 30 samples in two ImageFolder classes (`circle`, `square`), each sample three
files sharing a key: `.bin` (incompressible bytes, stored raw), `.txt` (compressible English-like
text, packed zstd-dict) and `.json` (metadata, packed zstd). Every byte comes from a SplitMix64
generator written out below, so the tree is the same on every machine and Python version.

Every edit in `apply` is one small, documented change to a copy of an intact dataset. Offsets are
found by reading the shard per format-spec/shard.md (footer -> index header -> tables), never
guessed; each edit prints what it did, and fixtures/corrupt/README.md lists the results.
"""

import argparse
import json
import os
import struct
import sys

MASK = (1 << 64) - 1

# ----------------------------------------------------------------------------------------------
# Deterministic content
# ----------------------------------------------------------------------------------------------


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        out = bytearray()
        while len(out) < n:
            out += self.next().to_bytes(8, "little")
        return bytes(out[:n])


CLASSES = ["circle", "square"]
PER_CLASS = 15
WORDS = (
    "the a shape with edges corners sides of and is drawn in red blue green thin thick "
    "line filled outline small large centre near left right top bottom rotated by degrees "
    "on white canvas pixel grid sample image"
).split()


def text(rng, n_words):
    lines, line = [], []
    for i in range(n_words):
        line.append(WORDS[rng.below(len(WORDS))])
        if len(line) == 9 or i + 1 == n_words:
            lines.append(" ".join(line) + ".")
            line = []
    return ("\n".join(lines) + "\n").encode()


def make_tree(out):
    """Writes the base tree into `out` (which must not exist or be empty)."""
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        sys.exit(f"corrupt.py: {out} is not empty")
    for c, cls in enumerate(CLASSES):
        os.makedirs(os.path.join(out, cls))
        for i in range(PER_CLASS):
            rng = SplitMix64(1000 * (c + 1) + i)
            key = os.path.join(out, cls, f"{i:04d}")
            with open(key + ".bin", "wb") as f:
                f.write(rng.bytes(200 + rng.below(400)))
            with open(key + ".txt", "wb") as f:
                f.write(text(rng, 60 + rng.below(60)))
            meta = {
                "id": c * PER_CLASS + i,
                "class": cls,
                "size": 16 + rng.below(48),
                "angle": rng.below(360),
                "colour": ["red", "green", "blue"][rng.below(3)],
            }
            with open(key + ".json", "wb") as f:
                f.write((json.dumps(meta, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------------------------
# Reading a shard (format-spec/shard.md, little-endian throughout)
# ----------------------------------------------------------------------------------------------

HEADER_SIZE = 64
FOOTER_SIZE = 96
INDEX_HEADER_SIZE = 64
FIELD_ENTRY = 48
SAMPLE_ENTRY = 32
RECORD_ENTRY = 40
KEYHASH_ENTRY = 16


def u64(b, at):
    return struct.unpack_from("<Q", b, at)[0]


def u32(b, at):
    return struct.unpack_from("<I", b, at)[0]


def align8(v):
    return (v + 7) & ~7


class Shard:
    """Just enough of a shard reader to find byte offsets; trusts the (intact) input."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            b = f.read()
        self.len = len(b)
        ft = len(b) - FOOTER_SIZE
        self.footer_at = ft
        (
            self.data_offset,
            self.data_len,
            self.dict_offset,
            self.dict_len,
            self.index_offset,
            self.index_len,
        ) = struct.unpack_from("<6Q", b, ft)
        ih = self.index_offset
        s, r, f, k, n, first = struct.unpack_from("<6Q", b, ih)
        self.samples, self.records, self.first_sample = s, r, first
        t_fields = ih + INDEX_HEADER_SIZE
        t_samples = t_fields + FIELD_ENTRY * f
        t_records = t_samples + SAMPLE_ENTRY * s
        t_keyhash = t_records + RECORD_ENTRY * r
        t_keys = t_keyhash + KEYHASH_ENTRY * s
        t_names = align8(t_keys + k)
        assert align8(t_names + n) == ih + self.index_len, "index layout does not add up"
        self.t_samples, self.t_records, self.t_keys = t_samples, t_records, t_keys
        self.fields = []
        for i in range(f):
            at = t_fields + FIELD_ENTRY * i
            name_off, name_len = u64(b, at), u64(b, at + 8)
            name = b[t_names + name_off : t_names + name_off + name_len].decode()
            self.fields.append(
                {
                    "name": name,
                    "codec": u32(b, at + 16),
                    "dict_offset": u64(b, at + 24),
                    "dict_len": u64(b, at + 32),
                }
            )
        self.sample_entries = []
        for i in range(s):
            at = t_samples + SAMPLE_ENTRY * i
            ko, kl, fr, rc = u64(b, at), u64(b, at + 8), u64(b, at + 16), u32(b, at + 24)
            self.sample_entries.append(
                {
                    "key": b[t_keys + ko : t_keys + ko + kl].decode(),
                    "key_at": t_keys + ko,
                    "key_len": kl,
                    "first_record": fr,
                    "record_count": rc,
                }
            )
        self.record_entries = []
        for i in range(r):
            at = t_records + RECORD_ENTRY * i
            self.record_entries.append(
                {
                    "offset": u64(b, at),
                    "stored_len": u64(b, at + 8),
                    "field": u32(b, at + 32),
                    "codec": u32(b, at + 36),
                }
            )

    def field_index(self, name):
        return [f["name"] for f in self.fields].index(name)

    def record_of(self, local, field_name):
        fi = self.field_index(field_name)
        e = self.sample_entries[local]
        for r in range(e["first_record"], e["first_record"] + e["record_count"]):
            if self.record_entries[r]["field"] == fi:
                return self.record_entries[r]
        raise KeyError(f"sample {local} has no field {field_name}")

    def describe(self):
        out = [
            f"{self.path}: {self.len} bytes, {self.samples} samples from {self.first_sample}, "
            f"{self.records} records",
            f"  data   {self.data_offset}..{self.data_offset + self.data_len}",
            f"  dicts  {self.dict_offset}..{self.dict_offset + self.dict_len}",
            f"  index  {self.index_offset}..{self.index_offset + self.index_len}",
            f"  footer {self.footer_at}..{self.len}",
        ]
        for f in self.fields:
            out.append(
                f"  field {f['name']!r} codec {f['codec']} dict "
                f"{f['dict_offset']}+{f['dict_len']}"
            )
        return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Edits
# ----------------------------------------------------------------------------------------------

# All shard damage goes to the middle shard, so a reader must get past an intact shard 0 first.
SHARD = "shard-000001.spk"
# flipped-record-bit damages this sample of SHARD (local index) in its raw `bin` field.
RECORD_SAMPLE = 6


def log(case, msg):
    print(f"{case}: {msg}")


def flip(path, at, bit, case):
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(1)[0]
        f.seek(at)
        f.write(bytes([old ^ (1 << bit)]))
    log(case, f"{os.path.basename(path)} byte {at} bit {bit}: {old:#04x} -> {old ^ (1 << bit):#04x}")


def put_u32(path, at, value, case):
    with open(path, "r+b") as f:
        f.seek(at)
        old = u32(f.read(4), 0)
        f.seek(at)
        f.write(struct.pack("<I", value))
    log(case, f"{os.path.basename(path)} u32 at byte {at}: {old} -> {value}")


def truncate(path, new_len, case):
    old = os.path.getsize(path)
    os.truncate(path, new_len)
    log(case, f"{os.path.basename(path)} cut from {old} to {new_len} bytes")


def rewrite_manifest(dir, edit, case):
    """Applies `edit` to the parsed manifest and writes it back in the writer's layout (pretty
    JSON, 2-space indent, trailing newline); checks first that this layout reproduces the
    original byte for byte, so only the edited values change."""
    path = os.path.join(dir, "manifest.json")
    with open(path, "rb") as f:
        raw = f.read()
    m = json.loads(raw)
    dump = lambda v: (json.dumps(v, indent=2, ensure_ascii=False) + "\n").encode()
    if dump(m) != raw:
        sys.exit("corrupt.py: manifest.json does not round-trip through json.dumps(indent=2)")
    edit(m)
    with open(path, "wb") as f:
        f.write(dump(m))


def v1_manifest(dir):
    """The fixtures are format-version-1 datasets. Version 2 changed only the manifest (it added
    `writer` and `features`; the shards are byte-identical), so a v2 pack becomes the v1
    dataset of the same shards by dropping those keys and setting `format_version` to 1."""

    def edit(m):
        if m["format_version"] == 2:
            del m["writer"]
            del m["features"]
            m["format_version"] = 1

    rewrite_manifest(dir, edit, "v1-manifest")


def apply(case, dir, other):
    shard_path = os.path.join(dir, SHARD)
    s = Shard(shard_path)
    if case == "intact":
        log(case, "no edit (the control)")
    elif case == "truncated-shard":
        # Cut in the middle of the data region (inside a record's stored bytes).
        truncate(shard_path, s.data_offset + s.data_len // 2, case)
    elif case == "truncated-footer":
        truncate(shard_path, s.len - 10, case)
    elif case == "bad-magic":
        # Header byte 0, 'S' (0x53) -> 's' (0x73).
        flip(shard_path, 0, 5, case)
    elif case == "unknown-version":
        # Header version (bytes 8..12) := 2; the header checksum is left as it was (no xxh3 in
        # the standard library). A reader checks the version before the checksum.
        put_u32(shard_path, 8, 2, case)
    elif case == "unknown-version-footer":
        # Footer version (footer bytes 72..76) := 2; the footer checksum is left as it was.
        put_u32(shard_path, s.footer_at + 72, 2, case)
    elif case == "flipped-record-bit":
        rec = s.record_of(RECORD_SAMPLE, "bin")
        assert rec["codec"] == 0, "the bin field must be stored raw"
        key = s.sample_entries[RECORD_SAMPLE]["key"]
        log(case, f"sample {RECORD_SAMPLE} of {SHARD} (global {s.first_sample + RECORD_SAMPLE}, "
                  f"key {key}), field bin: {rec['stored_len']} raw bytes at {rec['offset']}")
        flip(shard_path, rec["offset"] + rec["stored_len"] // 2, 0, case)
    elif case == "flipped-index-bit":
        # The last byte of sample 0's key in the index's key bytes: '...0' <-> '...1', so the
        # key would name another sample if the index checksum did not catch it.
        e = s.sample_entries[0]
        log(case, f"key bytes of sample 0 ({e['key']}) at {e['key_at']}, in the index region "
                  f"{s.index_offset}..{s.index_offset + s.index_len}")
        flip(shard_path, e["key_at"] + e["key_len"] - 1, 0, case)
    elif case == "flipped-dict-bit":
        f = s.fields[s.field_index("txt")]
        assert f["codec"] == 2 and f["dict_len"] > 0, "the txt field must have a dictionary"
        log(case, f"txt dictionary: {f['dict_len']} bytes at {f['dict_offset']}")
        flip(shard_path, f["dict_offset"] + f["dict_len"] // 2, 0, case)
    elif case == "missing-shard":
        os.remove(shard_path)
        log(case, f"removed {SHARD}")
    elif case == "manifest-counts":
        # Shard 1 claims one sample fewer; shard 2's first_sample and the total follow, so the
        # manifest is consistent in itself and only disagrees with shard 1.
        def edit(m):
            m["shards"][1]["samples"] -= 1
            m["shards"][2]["first_sample"] -= 1
            m["samples"] -= 1
            log(case, f"manifest.json: shards[1].samples -> {m['shards'][1]['samples']}, "
                      f"shards[2].first_sample -> {m['shards'][2]['first_sample']}, "
                      f"samples -> {m['samples']}")

        rewrite_manifest(dir, edit, case)
    elif case == "swapped-shard":
        if not other:
            sys.exit("corrupt.py: swapped-shard needs --other")
        with open(os.path.join(other, SHARD), "rb") as f:
            data = f.read()
        with open(shard_path, "wb") as f:
            f.write(data)
        o = Shard(shard_path)
        log(case, f"{SHARD} replaced by the other dataset's ({o.samples} samples, {o.records} "
                  f"records, as before: {s.samples}, {s.records})")
    elif case == "truncated-manifest":
        path = os.path.join(dir, "manifest.json")
        n = os.path.getsize(path)
        truncate(path, n // 2, case)
    else:
        sys.exit(f"corrupt.py: unknown case {case!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tree")
    t.add_argument("out")
    la = sub.add_parser("layout")
    la.add_argument("shard", nargs="+")
    a = sub.add_parser("apply")
    a.add_argument("case")
    a.add_argument("dir")
    a.add_argument("--other")
    v1 = sub.add_parser("v1-manifest")
    v1.add_argument("dir")
    args = p.parse_args()
    if args.cmd == "tree":
        make_tree(args.out)
    elif args.cmd == "layout":
        for sh in args.shard:
            print(Shard(sh).describe())
    elif args.cmd == "v1-manifest":
        v1_manifest(args.dir)
    else:
        apply(args.case, args.dir, args.other)


if __name__ == "__main__":
    main()
