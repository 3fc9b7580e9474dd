"""Numerical verification of S'MoRE's structural-flexibility results (arXiv 2504.06426, §3.5).

Every count is brute-forced through the real propagation code of :mod:`smore_gnn`:

* the closed forms of Theorems 3.3 / 3.4 (and our S'MoRE* formula) live once, in
  :mod:`smore_gnn.nn.counting`; everything here checks them;
* :mod:`theory.enumerate` -- every routing structure as a batched ``RoutingTree``;
* :mod:`theory.distinct` -- tolerance-aware, sort-based counting of distinct outputs;
* :mod:`theory.count` -- distinct adapter outputs over all structures (one GNN pass);
* :mod:`theory.isomorphism` -- WL hashes and canonical forms of the labelled trees;
* :mod:`theory.propositions` -- Propositions 3.1-3.2 and Figures 2-3 as checks;
* :mod:`theory.figures` -- the Figure 2 plot; :mod:`theory.cli` -- ``python -m theory verify``.
"""
