"""The ``labsupport`` command line: ``doctor``, ``data prepare``, ``labs generate`` and ``run``."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


def _doctor(_: argparse.Namespace) -> int:
    import torch

    from .data import dataset_status
    from .paths import data_root, model_cache
    from .training import configure_threads, pick_device

    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__}  (threads: {configure_threads()})")
    try:
        import torchvision
        print(f"torchvision {torchvision.__version__}")
    except ImportError:
        print("torchvision missing: pip install torchvision")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device      {pick_device('auto')}  (CUDA GPU: {cuda})")
    print(f"data dir    {data_root()}")
    print(f"model cache {model_cache()}")
    ok = True
    for name, status in dataset_status().items():
        print(f"  {name:<14} {status}")
        ok &= status.startswith("ok") or name in ("mnist", "cifar10")
    if not ok:
        print("Fashion-MNIST is required by the labs; see the fix above.")
    return 0 if ok else 1


def _prepare(args: argparse.Namespace) -> int:
    from .data import IMAGE_DATASETS, DatasetNotFoundError, load_dataset

    names = args.names or ["fashion-mnist", "digits"]
    failed = 0
    for name in names:
        if name not in IMAGE_DATASETS:
            print(f"unknown dataset {name!r}; choose from {list(IMAGE_DATASETS)}", file=sys.stderr)
            return 2
        try:
            data = load_dataset(name, download=args.download)
            print(f"{name}: ready, {len(data.y_train)} train / {len(data.y_test)} test ({data.source})")
        except DatasetNotFoundError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _labs(args: argparse.Namespace) -> int:
    from .course import generate_labs

    status = generate_labs(Path(args.root) if args.root else None, check=args.check)
    if args.check:
        if status.stale:
            print("labs/ is stale: " + ", ".join(str(p) for p in status.stale) +
                  "\nRun `labsupport labs generate` and commit the result.", file=sys.stderr)
            return 1
        print("labs/ is up to date with solutions/")
        return 0
    for p in status.written:
        print(f"wrote {p}")
    if not status.written:
        print("labs/ already up to date")
    return 0


def _run(args: argparse.Namespace) -> int:
    from nbclient.exceptions import CellExecutionError

    from .course import EXERCISE_CHECK_TAG, repo_root, run_notebook

    root = repo_root()
    folder = root / args.which
    paths = [Path(p) for p in args.notebooks] or sorted(folder.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks found in {folder}", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else root / "executed" / args.which
    student = args.which == "labs"
    status = 0
    for path in paths:
        print(f"running {path} (profile={args.profile or 'notebook default'}) ...", flush=True)
        try:
            res = run_notebook(path, out_dir / path.name, profile=args.profile, allow_errors=student)
        except CellExecutionError as exc:
            print(f"  FAILED (partial run saved to {out_dir / path.name}):\n{str(exc)[-1500:]}", file=sys.stderr)
            status = 1
            continue
        bad = [e for e in res.errors if not (e[1] == "NotImplementedError" and EXERCISE_CHECK_TAG in e[2])]
        todo = len(res.errors) - len(bad)
        print(f"  done in {res.seconds:.0f} s -> {res.output}"
              + (f"; {todo} exercise(s) still to do" if todo else ""))
        for cell, ename, _ in bad:
            print(f"  cell {cell}: {ename}", file=sys.stderr)
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labsupport", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("doctor", help="versions, device, and which datasets are present where").set_defaults(func=_doctor)

    data = sub.add_parser("data", help="dataset commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="materialise offline datasets (and download when online)")
    prep.add_argument("names", nargs="*", help="datasets (default: fashion-mnist digits)")
    prep.add_argument("--download", action="store_true", help="allow torchvision downloads (MNIST, CIFAR-10)")
    prep.set_defaults(func=_prepare)

    labs = sub.add_parser("labs", help="student notebook generation")
    labs_sub = labs.add_subparsers(dest="labs_command", required=True)
    gen = labs_sub.add_parser("generate", help="write labs/ from solutions/")
    gen.add_argument("--check", action="store_true", help="only report whether labs/ is stale")
    gen.add_argument("--root", help="course checkout (default: this one)")
    gen.set_defaults(func=_labs)

    run = sub.add_parser("run", help="execute notebooks headless and save executed copies")
    run.add_argument("which", choices=["solutions", "labs"], help="solution or student notebooks")
    run.add_argument("notebooks", nargs="*", help="specific notebooks (default: all in the folder)")
    run.add_argument("--profile", choices=["full", "quick", "gpu"], help="override the profile")
    run.add_argument("--out", help="folder for executed copies (default: executed/<which>)")
    run.set_defaults(func=_run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
