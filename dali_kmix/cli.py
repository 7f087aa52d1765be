"""The ``kmix`` command line.

    kmix demo [--out DIR] [--device auto|cpu|gpu] [--batch-size N] [--k K] [--alpha A] [--batches N]
    kmix bench [--quick] [--out DIR] [--data DIR]
    kmix data photos DIR [--per-class N]
    kmix kernels build          # compile the CPU kernels now (otherwise on first use)
    kmix kernels check [--arch sm_80 sm_90]   # compile gate: NVRTC (and nvcc if present)
"""

from __future__ import annotations

import argparse
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
    from .bench import format_table, run

    path, rows = run(args.out, quick=args.quick, data_dir=args.data, progress=not args.no_progress)
    print(format_table(rows))
    print(f"wrote {path}")
    return 0


def _cmd_data(args) -> int:
    from .data import make_photo_tree

    if args.dataset == "photos":
        root = make_photo_tree(args.dir, images_per_class=args.per_class, overwrite=args.overwrite)
        print(f"wrote {root}")
        return 0
    raise SystemExit(f"unknown dataset {args.dataset!r}")


def _cmd_kernels(args) -> int:
    from . import cpu_kernels, kernel_source

    if args.action == "build":
        print(cpu_kernels.build(verbose=True))
        return 0
    compilers = [("nvrtc", kernel_source.compile_with_nvrtc)]
    if shutil.which("nvcc"):
        compilers.append(("nvcc ", kernel_source.compile_with_nvcc))
    failed = 0
    for name in kernel_source.DEVICE_SOURCES:
        for arch in args.arch:
            for label, compile_fn in compilers:
                try:
                    cubin = compile_fn(name, arch)
                    print(f"{label} {arch} {name}: ok ({len(cubin)} bytes)")
                except kernel_source.KernelCompileError as exc:
                    print(exc, file=sys.stderr)
                    failed += 1
    print(f"host build: {cpu_kernels.build()}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kmix", description="K-image mixing (DMixup, DCutMix) for NVIDIA DALI")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("data", help="write a JPEG folder tree")
    p.add_argument("dataset", choices=["photos"])
    p.add_argument("dir")
    p.add_argument("--per-class", type=int, default=12)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("kernels", help="build the CPU kernels or run the compile gate")
    p.add_argument("action", choices=["build", "check"])
    p.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    p.set_defaults(func=_cmd_kernels)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
