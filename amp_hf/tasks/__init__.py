"""Offline data sets and small models shared by the demo, the example scripts and the benchmark studies.

Not needed to train with `AMPTrainer`: this is support code, kept in the library so that `examples/` and
`benchmarks/` both import it from one place (neither imports the other). Nothing here downloads anything; each loader
reads a file that a package or Debian installs (see `data`), and heavy imports happen inside the functions.
"""
