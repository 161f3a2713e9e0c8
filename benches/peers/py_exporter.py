#!/usr/bin/python3
"""Peer (a): a Python prometheus_client exporter serving the same series as vpswatch.

Usage: /usr/bin/python3 py_exporter.py EXPOSITION.txt PORT

The exposition is parsed once at start into plain data (name, type, help, samples), as a
real exporter holds its data; every scrape a custom collector re-creates the metric
families from that data (Metric + add_sample per series), as a real Python exporter's
collect() does, and prometheus_client encodes them (gzip when the client accepts it).
"""
import sys
import time

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fams = []
    for fam in text_string_to_metric_families(text):
        samples = [(s.name, dict(s.labels), s.value) for s in fam.samples]
        fams.append((fam.name, fam.documentation, fam.type, samples))
    return fams


class Replay(Collector):
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        for name, doc, typ, samples in self.fams:
            m = Metric(name, doc, typ)
            for sname, labels, value in samples:
                m.add_sample(sname, labels, value)
            yield m


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    fams = load(path)
    # Only the replayed series: drop the default process/platform/gc collectors.
    for c in list(REGISTRY._collector_to_names):
        REGISTRY.unregister(c)
    REGISTRY.register(Replay(fams))
    start_http_server(port, addr="127.0.0.1")
    print(f"python exporter: {sum(len(f[3]) for f in fams)} samples on 127.0.0.1:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
