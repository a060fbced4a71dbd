"""GLCC: kNN graph (knn), transductive label propagation by block CG (propagation), linear probe (probe),
inductive label propagation and the probe combination (inductive), the `GLCC` object (model) and the
``tusss embed | fit | predict | pseudo-label`` commands (commands). Import the submodules directly."""
