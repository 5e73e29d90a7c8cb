"""Benchmarks: measurement functions that return dataclasses, and a thin command line.

``flowmatch bench NAME [options]`` (or ``python -m benchmarks NAME``) runs one benchmark; its
module is imported only then. Nothing in ``flowmatch`` or ``baselines`` imports this package:
it sits above both (``docs/architecture.md``). It ships in the wheel beside them so that
``flowmatch bench`` works from an installed package, not only from a checkout.

A benchmark module ``NAME`` (e.g. :mod:`benchmarks.flow`) has three layers:

1. ``measure_NAME(...)`` takes plain arguments, measures, and returns a frozen dataclass
   (``FlowBench`` …) holding every figure; it neither prints nor reads argparse, so tests and
   notebooks call it directly.
2. ``add_arguments(parser)`` adds the benchmark's own options; the shared ones
   (``--pair/--seed/--quick/--threads/--json``) come from
   :func:`benchmarks._common.common_options`.
3. ``main(args)`` is the thin command layer: inside :func:`benchmarks._common.running` (thread
   limits, environment, wall time, ``--json``) it calls ``measure_NAME`` with the options,
   prints the tables and stores the dataclass in ``run.result``.

To add a benchmark, write such a module and add its name and one-line description to
:data:`BENCHMARKS`.
"""

#: name → one-line description; ``flowmatch bench NAME`` runs ``benchmarks.NAME.main``.
BENCHMARKS: dict[str, str] = {
    "flow": "flow autoencoders vs PCA+GMM and a trace-estimator CNF",
    "tree": "density-tree time and memory vs gudhi's ToMATo",
    "translate": "zero-pair translation vs supervised stitching and Gromov-Wasserstein",
    "compare": "every method on every zoo pair under the evaluation protocol",
    "interp": "Jacobian-sparsity rotations and the Local Interaction Basis on digits MLPs",
    "polytope": "polytope (spline-code) densities and code clusters on the zoo models",
    "embeddings": "zero-pair translation between pretrained sentence encoders (extra [text])",
    "anchors": "k-means + QAP anchor runs on real embeddings, judged by the supervised map",
    "speed": "translate vs mini-vec2vec wall time and peak memory at 5e3-1e5 rows",
    "scale": "activation stores on disk to a translation at 1e6 rows; 1 vs 2 processes",
}

__all__ = ["BENCHMARKS"]
