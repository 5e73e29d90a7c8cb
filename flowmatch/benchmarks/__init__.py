"""Benchmark commands (``flowmatch bench NAME``): one module per benchmark.

Each module defines ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is printed
as a table and written as JSON by :mod:`flowmatch.benchmarks._common`.
"""

# name → one-line description; ``flowmatch bench NAME`` runs flowmatch.benchmarks.NAME
BENCHMARKS: dict[str, str] = {
    "flow": "flow autoencoders vs PCA+GMM and a trace-estimator CNF",
    "tree": "density-tree time and memory vs gudhi's ToMATo",
    "translate": "zero-pair translation vs supervised stitching and Gromov-Wasserstein",
    "compare": "every method on every zoo pair under the evaluation protocol",
    "interp": "Jacobian-sparsity rotations and the Local Interaction Basis on digits MLPs",
    "polytope": "polytope (spline-code) densities and code clusters on the zoo models",
    "embeddings": "zero-pair translation between pretrained sentence encoders (extra [text])",
    "speed": "translate vs mini-vec2vec wall time and peak memory at 5e3-1e5 rows",
}

__all__ = ["BENCHMARKS"]
