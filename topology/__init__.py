"""Pictures of a host's PCIe topology and of each guest's mirrored tree beside it.

`model.picture` turns typed data (a host's `HostFacts`, HostTuning's `Topology`, guests'
`Layout`s) into a small picture model; `render.dot` writes it as Graphviz DOT text; `domain`
reads a guest's layout back from its libvirt domain XML; `stack` lists a deployed stack's nodes
and guests (pure) and gathers each node's facts and guests over SSH; `python -m topology` ties
them together and has Graphviz's `dot` draw the SVG and PNG. Everything but the command and
`stack`'s gathering is pure.
"""
