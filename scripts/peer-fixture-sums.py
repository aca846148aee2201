#!/usr/bin/env python3
"""Writes fixtures/peers/webdataset/samples.sha256.tsv: every sample of every WebDataset tar in
fixtures/peers/webdataset/ as webdataset's own reader groups it (webdataset 1.0.2,
`wds.WebDataset(url, shardshuffle=False)` without decoding): tar, key, field, size, sha256.

The converter tests (cli/tests/wds.rs) compare every record shardpack packs to this file, so the
grouping rules are checked against webdataset's code, not against a copy of them.

    python3 -m venv /tmp/wdsvenv && /tmp/wdsvenv/bin/pip install webdataset==1.0.2
    /tmp/wdsvenv/bin/python scripts/peer-fixture-sums.py
"""

import hashlib
import os
import sys

import webdataset as wds

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "peers", "webdataset")
TARS = ["compressed.tar", "mpdata.tar", "sample.tgz", "stamps-wds.tar", "tendata.tar", "testgz.tar"]


def main():
    rows = []
    for name in TARS:
        ds = wds.WebDataset(os.path.join(HERE, name), shardshuffle=False, empty_check=False)
        for sample in ds:
            key = sample["__key__"]
            for field, value in sorted(sample.items()):
                if field.startswith("__"):
                    continue
                rows.append((name, key, field, len(value), hashlib.sha256(value).hexdigest()))
    out = os.path.join(HERE, "samples.sha256.tsv")
    with open(out, "w") as f:
        f.write("# tar\tkey\tfield\tsize\tsha256 (webdataset %s; scripts/peer-fixture-sums.py)\n" % wds.__version__)
        for r in rows:
            f.write("\t".join(str(x) for x in r) + "\n")
    print(f"{len(rows)} records -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
