"""The ``kmix`` command line.

    kmix demo [--out DIR] [--device auto|cpu|gpu] [--batch-size N] [--k K] [--alpha A] [--batches N]
    kmix bench [--quick] [--out DIR] [--data DIR]
    kmix data photos DIR [--per-class N]
    kmix data fashion-mnist DIR [--per-class N] [--val-per-class N]
    kmix data check DIR         # decode every image as kmix train would; list the files DALI cannot decode
    kmix train --data DIR [--mix none|mixup|cutmix|dmixup|dcutmix|saliency-dcutmix] [--k K] ...
    torchrun --nproc_per_node 2 -m dali_kmix.apps.cli train --data DIR ...
    kmix subsample --data DIR/train --checkpoint CKPT --ratio 0.1 --out subset.txt [--figure fig.png]
    kmix kernels build          # compile the CPU kernels and the DALI plugin now (otherwise on first use)
    kmix kernels check [--arch sm_80 sm_90]   # compile gate: NVRTC (and nvcc if present)

A mistake in what was asked (a missing folder or checkpoint, k = 1, a negative alpha, a
ratio of 2) is answered with one line, ``kmix: error: ...``, and exit status 2, as
argparse answers a bad option; ``kmix --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    res = run_demo(out_dir=args.out, device=args.device, batch_size=args.batch_size, k=args.k, alpha=args.alpha,
                   batches=args.batches, seed=args.seed)
    print(f"wrote {res['png']}")
    ratio = res["images_per_s"] / res["no_mix_images_per_s"]
    print(f"throughput ({res['device']}, batch {res['batch_size']}, 224x224 uint8): "
          f"DCutMix K={res['k']} {res['images_per_s']:.0f} images/s, without mixing "
          f"{res['no_mix_images_per_s']:.0f} images/s ({100 * ratio:.0f} %)")
    return 0


def _cmd_bench(args) -> int:
    from .bench import run

    path, _ = run(args.out, quick=args.quick, data_dir=args.data, progress=not args.no_progress)
    print(path.with_suffix(".md").read_text())  # every table, KMixup against timm included
    print(f"wrote {path}")
    return 0


def _cmd_data(args) -> int:
    from .common import UsageError, check_at_least
    from .data import FASHION_MNIST_DIR, check_data, make_fashion_mnist_tree, make_photo_tree

    if args.dataset == "check":
        res = check_data(args.dir, device=args.device, progress=not args.no_progress)
        for path, why in res["bad"]:
            print(f"{path}: {why}")
        for problem in res["problems"]:
            print(f"kmix: problem: {problem}")
        print(f"checked {res['files']} files in {args.dir}: {len(res['bad'])} DALI cannot decode"
              + (f", {len(res['problems'])} problem(s) with the class folders" if res["problems"] else ""))
        return 1 if res["bad"] or res["problems"] else 0
    check_at_least("--per-class", args.per_class)
    check_at_least("--val-per-class", args.val_per_class)
    check_at_least("--seed", args.seed, 0)
    if args.dataset == "photos":
        unused = [flag for flag, value in (("--val-per-class", args.val_per_class), ("--source", args.source))
                  if value is not None]
        if unused:
            verb = "apply" if len(unused) > 1 else "applies"
            raise UsageError(f"{' and '.join(unused)} {verb} to fashion-mnist only, not to photos")
        root = make_photo_tree(args.dir, images_per_class=12 if args.per_class is None else args.per_class,
                               seed=args.seed, overwrite=args.overwrite)
    else:
        root = make_fashion_mnist_tree(args.dir, source=args.source or FASHION_MNIST_DIR,
                                       train_per_class=args.per_class, val_per_class=args.val_per_class,
                                       seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {root}")
    return 0


def _cmd_subsample(args) -> int:
    from .subsample import run

    res, _ = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"scored {res['scored']} samples, kept {res['kept']}: wrote {res['out']} and {res['scores']}")
    return 0


def resume_command(argv, world_size: int = 1) -> str:
    """The command that resumes a run started with ``argv`` (the arguments after the program name):
    the same arguments, without ``--stop-after N``, with ``--resume``."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--stop-after":
            skip = True
        elif not a.startswith("--stop-after="):
            rest.append(a)
    if "--resume" not in rest:
        rest.append("--resume")
    if world_size > 1:
        prog = ["torchrun", "--nproc_per_node", str(world_size), "-m", "dali_kmix.apps.cli"]
    elif os.path.basename(sys.argv[0]) == "kmix":
        prog = ["kmix"]
    else:
        prog = [sys.executable, "-m", "dali_kmix.apps.cli"]
    return shlex.join(prog + rest)


def _cmd_train(args) -> int:
    from .train import config_from_args, train

    summary = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    at = summary["stopped_at"]
    if at is not None:
        print(f"stopped after step {at['step']} of {at['steps']} (epoch {at['epoch']}, step {at['epoch_step']} of "
              f"{at['steps_per_epoch']}); checkpoint in {os.path.join(args.out, 'checkpoint.pt')}")
        print(f"resume with: {resume_command(args.argv, summary['world_size'])}")
        return 0
    err = summary["final_val_top1_err"]
    print(f"final val top-1 error {100 * err:.2f} % after {summary['epochs']} epochs "
          f"({summary['world_size']} process(es), {summary['run_s']:.0f} s); files in {args.out}")
    return 0


def _cmd_kernels(args) -> int:
    from ..backends import cpu, sources

    if args.action == "build":
        print(cpu.build(verbose=True))
        try:
            from ..backends import plugin

            print(plugin.build(verbose=True))
        except ImportError as exc:  # DALI is not installed: the plugin has nothing to plug into
            print(f"DALI plugin not built: {exc}")
        return 0
    compilers = [("nvrtc", sources.compile_with_nvrtc)]
    if shutil.which("nvcc"):
        compilers.append(("nvcc ", sources.compile_with_nvcc))
    failed = 0
    for name in sources.DEVICE_SOURCES:
        for arch in args.arch:
            for label, compile_fn in compilers:
                try:
                    cubin = compile_fn(name, arch)
                    print(f"{label} {arch} {name}: ok ({len(cubin)} bytes)")
                except sources.KernelCompileError as exc:
                    print(exc, file=sys.stderr)
                    failed += 1
    print(f"host build: {cpu.build()}")
    return 1 if failed else 0


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: ``resume_command`` drops ``--stop-after`` by its name, and would keep an
    abbreviation of it (the printed resume command would stop again)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def main(argv=None) -> int:
    parser = _Parser(prog="kmix", description="K-image mixing (DMixup, DCutMix) for NVIDIA DALI")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)  # its parsers are _Parsers too

    p = sub.add_parser("demo", help="DCutMix K=3 over real photos: PNG grid and images/s")
    p.add_argument("--out", default=".demo")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="kernel and pipeline throughput; JSON under benchmarks/results/")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (about a minute on 2 cores)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--data", default=None, help="JPEG tree for the pipeline figures (default: photo tree)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("data", help="write a JPEG folder tree, or check one (decode every file, as kmix train would)")
    p.add_argument("dataset", choices=["photos", "fashion-mnist", "check"])
    p.add_argument("dir", help="where to write the tree; for check: a class tree, or a folder with train/ and val/")
    p.add_argument("--per-class", type=int, default=None,
                   help="images per class (photos: default 12; fashion-mnist: train subset, default all 6000)")
    p.add_argument("--val-per-class", type=int, default=None, help="fashion-mnist: val subset (default all 1000)")
    p.add_argument("--source", default=None, help="fashion-mnist IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="check: decode with DALI's CPU decoder or the GPU's (\"mixed\") one")
    p.add_argument("--no-progress", action="store_true", help="check: no progress bar")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("subsample", help="score samples by the CV of mixed losses; write a subset file_list")
    from .subsample import add_arguments as add_subsample_arguments

    add_subsample_arguments(p)
    p.set_defaults(func=_cmd_subsample)

    p = sub.add_parser("train", help="train through the DALI iterator (torchrun for many processes)")
    from .train import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("kernels", help="build the CPU kernels or run the compile gate")
    p.add_argument("action", choices=["build", "check"])
    p.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    p.set_defaults(func=_cmd_kernels)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


#: What a user's mistake raises (bad values, missing files); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


if __name__ == "__main__":
    sys.exit(main())
