"""The ``flowmatch`` command.

flowmatch run [CONFIG]                 whole pipeline on a configured zoo pair → runs/<name>/
flowmatch configs                      the bundled configs (``flowmatch run NAME`` runs one)
flowmatch zoo list | train NAME        bundled model pairs
flowmatch fit ACTS --out AE            fit a flow autoencoder to your activations
flowmatch translate A B --out DIR      fit a zero-pair translation between two activation files
flowmatch compare --pair NAME          flowmatch against every baseline, one table
flowmatch bench NAME [options]         benchmarks that print measured figures

``bench`` and ``compare`` hand their arguments to the ``benchmarks`` package (which sits above
the library, ``docs/architecture.md``); its modules are imported only when one runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from flowmatch import __version__

__all__ = ["int_argument", "main"]

DEFAULT_CONFIG = "digits"


def _cmd_zoo(args: argparse.Namespace) -> int:
    from flowmatch import zoo

    if args.action == "list":
        for name, (a, b) in zoo.PAIRS.items():
            print(f"{name:18s} A: {a.arch} {a.hidden} on {a.dataset}   B: {b.arch} {b.hidden}")
        return 0
    pair = zoo.load_pair(args.name)
    for side, info in (("A", pair.info_a), ("B", pair.info_b)):
        print(f"{args.name} model {side}: test accuracy {info['test_accuracy']:.4f}")
    print(f"cached under {zoo.cache_dir() / 'zoo'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flowmatch.config import find_config, load_config
    from flowmatch.outputs import check_folder_output
    from flowmatch.pipeline import run_pipeline

    config = load_config(find_config(args.config))
    if args.output_dir:
        from dataclasses import replace

        config = replace(config, output_dir=args.output_dir)
    check_folder_output(config.run_dir(), "run")
    run_pipeline(config, progress=not args.quiet)
    return 0


def _load_activations(path: str):  # noqa: ANN202
    """An ActivationStore for a store folder, else an ActivationSet (.safetensors / .npy)."""
    from flowmatch.activations import ActivationSet
    from flowmatch.store import ActivationStore

    return ActivationStore.open(path) if os.path.isdir(path) else ActivationSet.load(path)


def _cmd_fit(args: argparse.Namespace) -> int:
    from flowmatch import distributed
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.outputs import check_file_output

    distributed.init_from_env()
    main = distributed.is_main()
    ae = FlowAutoencoder(
        latent_dim=args.latent_dim,
        flow=args.flow,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        checkpoint=args.checkpoint,
        progress=main and not args.quiet,
    )
    ae.validate_params()
    if main:
        check_file_output(args.out, "FlowAutoencoder")
    acts = _load_activations(args.activations)
    ae.fit(acts)
    if main:
        ae.save(args.out)
        where = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        print(
            f"fitted {ae.flow_} autoencoder{where}: d={ae.d_in_} → k={ae.latent_dim_} "
            f"({ae.n_steps_} steps); wrote {args.out}"
        )
    distributed.barrier()
    distributed.shutdown()
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from flowmatch.outputs import check_folder_output
    from flowmatch.translation import translate

    check_folder_output(args.out, "Translation")
    a, b = _load_activations(args.a), _load_activations(args.b)
    t = translate(a, b, seed=args.seed, progress=True)
    t.save(args.out)
    print(f"{t!r}\nwrote {args.out}")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from flowmatch.config import bundled_configs

    for name, path in bundled_configs().items():
        print(f"{name:18s} {path}")
    return 0


def _run_bench(argv: Sequence[str], prog: str) -> int:
    """``flowmatch bench NAME …``: the benchmarks' own command line."""
    try:
        from benchmarks.cli import main as bench_main
    except ModuleNotFoundError as err:
        if err.name != "benchmarks":
            raise
        print("flowmatch: error: the benchmarks package is not installed", file=sys.stderr)
        return 2
    bench_main(argv, prog)
    return 0


def int_argument(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an int in ``[low, high]`` (no upper bound when ``high`` is None),
    with a message that says which."""
    rule = f"between {low} and {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an int {rule}, got {value}")
        return value

    return parse


_seed = int_argument(0, 2**32 - 1)


def _latent_dim(text: str) -> int | str:
    return text if text == "auto" else int_argument(1)(text)


def _add_fit_parser(sub: Any) -> None:
    """``flowmatch fit``'s options."""
    f = sub.add_parser(
        "fit",
        help="fit a flow autoencoder to activations (a store folder, .safetensors or .npy); "
        "data-parallel under torchrun",
    )
    f.add_argument(
        "activations",
        help="an ActivationStore folder (streamed from disk), an ActivationSet .safetensors "
        "file or an (n, d) .npy matrix",
    )
    f.add_argument("--out", required=True, help="where to write the autoencoder (.safetensors)")
    f.add_argument(
        "--latent-dim",
        type=_latent_dim,
        default="auto",
        help="kept latent coordinates k, or 'auto'",
    )
    f.add_argument(
        "--flow",
        default="auto",
        help="flow family: 'auto' (cnf on CUDA, coupling on the CPU), 'coupling' or 'cnf'",
    )
    f.add_argument("--seed", type=_seed, default=0, help="random seed")
    f.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda'")
    f.add_argument(
        "--batch-size", type=int_argument(1), default=128, help="global minibatch (all processes)"
    )
    f.add_argument("--max-steps", type=int_argument(1), default=1200, help="optimiser steps")
    f.add_argument(
        "--checkpoint", help="checkpoint file: written while training, resumed from when present"
    )
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fit)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowmatch",
        description="Relate two networks' representations without paired data.",
    )
    p.add_argument("--version", action="version", version=f"flowmatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole pipeline on a configured pair")
    r.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        help="a YAML config file, or the name of a bundled config (see 'flowmatch configs'); "
        f"default {DEFAULT_CONFIG}",
    )
    r.add_argument("--output-dir", help="override the config's output_dir (default runs/)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)

    cf = sub.add_parser("configs", help="list the bundled configs")
    cf.set_defaults(func=_cmd_configs)

    z = sub.add_parser("zoo", help="bundled model pairs")
    zs = z.add_subparsers(dest="action", required=True)
    zs.add_parser("list", help="list the bundled pairs")
    zt = zs.add_parser("train", help="train (or load from the cache) a pair and print accuracies")
    zt.add_argument("name", help="pair name, see 'flowmatch zoo list'")
    z.set_defaults(func=_cmd_zoo)

    _add_fit_parser(sub)

    t = sub.add_parser("translate", help="fit a zero-pair translation between two activation files")
    t.add_argument("a", help="model A activations (store folder, .safetensors ActivationSet, .npy)")
    t.add_argument("b", help="model B activations (need not come from the same inputs)")
    t.add_argument("--out", required=True, help="output folder for the Translation")
    t.add_argument("--seed", type=_seed, default=0, help="random seed")
    t.set_defaults(func=_cmd_translate)

    # parsed by the benchmarks' own command line (see _command); listed here for --help
    sub.add_parser("compare", help="flowmatch against every baseline on a zoo pair", add_help=False)
    sub.add_parser("bench", help="benchmarks that print measured figures", add_help=False)
    return p


def _command(argv: Sequence[str]) -> Callable[[], int]:
    """What to run for ``argv``; argument errors exit here (status 2) before anything runs."""
    if argv[:1] == ["bench"]:
        return partial(_run_bench, argv[1:], "flowmatch bench")
    if argv[:1] == ["compare"]:
        return partial(_run_bench, ["compare", *argv[1:]], "flowmatch")
    args = _parser().parse_args(argv)
    return partial(args.func, args)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Error classes that mean bad input, arguments, files or environment (not a bug); a
    benchmark's failed worker raises a ChildProcessError, an OSError."""
    from flowmatch.validation import NotFittedError

    return (ValueError, TypeError, KeyError, OSError, NotFittedError, FloatingPointError)


def _message(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(text):
        text = f"{text}: {err.filename}"
    return " ".join(str(text).split()) or type(err).__name__


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` cleans up."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowmatch`` console script.

    Every expected error ends in one line ``flowmatch: error: …`` on stderr and a non-zero
    exit status (2; 130 after Ctrl-C, 143 after SIGTERM, both with staging cleaned up).
    ``FLOWMATCH_TRACEBACK=1`` shows the traceback instead.
    """
    command = _command(list(sys.argv[1:] if argv is None else argv))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(command() or 0)
    except _Terminated:
        print("flowmatch: terminated; no partial files were written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("flowmatch: interrupted; no partial files were written", file=sys.stderr)
        return 130
    except _expected_errors() as err:
        if os.environ.get("FLOWMATCH_TRACEBACK"):
            raise
        print(f"flowmatch: error: {_message(err)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
