"""Fine-tuning and evaluation: the HF ``Trainer`` with S'MoRE's balance loss, optimizer groups,
multiple-choice evaluation (:mod:`~smore_gnn.train.trainer`, :mod:`~smore_gnn.train.optim`,
:mod:`~smore_gnn.train.evaluation`)."""
