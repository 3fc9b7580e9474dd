"""S'MoRE (Structural Mixture of Residual Experts) as a PyTorch Geometric GNN."""
