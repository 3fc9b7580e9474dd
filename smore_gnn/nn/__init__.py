"""The S'MoRE adapter: configuration, router, routed sub-trees as a PyG graph, the conv, the layer.

Read in the order of the method (docs/spec.md): :mod:`~smore_gnn.nn.config` (one validated
config), :mod:`~smore_gnn.nn.gates` and :mod:`~smore_gnn.nn.router` (the top-down walk),
:mod:`~smore_gnn.nn.tree` (the routed sub-trees as one batched graph),
:mod:`~smore_gnn.nn.experts` and :mod:`~smore_gnn.nn.conv` (the bottom-up message passing),
:mod:`~smore_gnn.nn.layer` (``SMoRELinear``: a frozen linear plus the adapter delta), and
:mod:`~smore_gnn.nn.accounting` / :mod:`~smore_gnn.nn.counting` (parameters, FLOPs, tree sizes
and structural flexibility). :mod:`~smore_gnn.nn.reference` holds the dense oracle the tests
compare the GNN path with. Only torch and PyG are imported here.
"""
