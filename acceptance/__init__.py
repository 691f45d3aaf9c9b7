"""The acceptance benchmark of a deployed stack: run the benchmarks, compare with a baseline.

`python -m acceptance --stack STACK` reads the stack's outputs (VM addresses, hostfile, NCCL
environment), runs a plan of benchmark commands over SSH, parses what they print
(`parsers`), compares the VMs with a baseline recorded on the same nodes as bare metal
(`compare`), and writes a JSON result, a table and a Figure-2-like chart (`chart`). The exit
status is non-zero when the VMs fall short of the baseline, so it can gate a rollout.

Only the orchestration needs a live cluster; everything else is pure and unit-tested against
real recorded outputs (tests/data/recorded/benchmarks).
"""
