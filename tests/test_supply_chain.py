"""Supply chain: the pickle exploit really runs code (harmlessly), weights_only and safetensors
refuse or avoid it, the allow-list scan flags it, and manifests catch a one-byte change."""

import pickle

import pytest
import torch

import labsupport as ls
from labsupport.defenses import supply_chain as sc


@pytest.fixture()
def weights():
    torch.manual_seed(0)
    return ls.MLP().state_dict()


@pytest.mark.parametrize("torch_format", [True, False])
def test_loading_the_exploit_runs_code(tmp_path, weights, torch_format):
    marker = tmp_path / "pwned"
    path = sc.write_pickle_exploit(tmp_path / "model.pt", marker, weights, torch_format=torch_format)
    assert not marker.exists()  # writing it ran nothing
    if torch_format:
        loaded = torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as handle:
            loaded = pickle.load(handle)  # the deliberate, harmless exploit demo
    assert marker.exists(), "unpickling should have created the marker file"
    assert torch.equal(loaded["state_dict"]["hidden.0.weight"], weights["hidden.0.weight"])


def test_weights_only_refuses_and_safetensors_avoids_it(tmp_path, weights):
    marker = tmp_path / "pwned"
    path = sc.write_pickle_exploit(tmp_path / "model.pt", marker, weights)
    with pytest.raises(pickle.UnpicklingError, match="Path.touch|pathlib|weights_only"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    safe = ls.io.save_weights(tmp_path / "model.safetensors", weights)
    assert torch.equal(ls.io.load_weights(safe)["hidden.0.weight"], weights["hidden.0.weight"])
    assert not marker.exists()


def test_allow_list_scan(tmp_path, weights):
    bad = sc.write_pickle_exploit(tmp_path / "bad.pt", tmp_path / "pwned", weights)
    report = sc.scan_pickle(bad)
    # torch.save pickles with protocol 2: Path.touch travels as getattr(pathlib.Path, "touch")
    assert not report.safe and ("pathlib", "Path") in report.rejected
    assert any(name == "getattr" for _, name in report.rejected)
    assert "REJECTED:" in str(report) and "pathlib.Path" in str(report)
    bare = sc.scan_pickle(sc.write_pickle_exploit(tmp_path / "bad.pkl", tmp_path / "pwned", torch_format=False))
    assert ("pathlib", "Path.touch") in bare.rejected  # protocol 4 names it directly
    good = tmp_path / "good.pt"
    torch.save(weights, good)
    assert sc.scan_pickle(good).safe, sc.scan_pickle(good).rejected
    assert not (tmp_path / "pwned").exists()  # scanning never unpickles


def test_manifest_catches_a_one_byte_change(tmp_path, weights):
    path = ls.io.save_weights(tmp_path / "model.safetensors", weights)
    data = tmp_path / "train.bin"
    data.write_bytes(bytes(range(256)) * 4)
    manifest = sc.write_manifest([path, data], tmp_path / "MANIFEST.json")
    assert sorted(sc.verify_manifest(manifest)) == sorted([data, path])
    assert torch.equal(sc.load_verified(path, manifest)["hidden.0.weight"], weights["hidden.0.weight"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ls.IntegrityError, match="model.safetensors: SHA-256 is .* expected"):
        sc.load_verified(path, manifest)
    with pytest.raises(ls.IntegrityError):
        sc.verify_manifest(manifest)


def test_manifest_bad_input(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    manifest = sc.write_manifest([f], tmp_path / "m.json")
    f.unlink()
    with pytest.raises(FileNotFoundError, match="a.bin is listed in .* but missing"):
        sc.verify_manifest(manifest)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sc.write_manifest([tmp_path / "nope.bin"], tmp_path / "m2.json")
    with pytest.raises(ValueError, match="files is empty"):
        sc.write_manifest([], tmp_path / "m3.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a labsupport manifest"):
        sc.verify_manifest(tmp_path / "junk.json")


def test_picklescan_flags_the_torch_exploit_but_judges_by_its_own_name_list(tmp_path):
    from labsupport.defenses import third_party_scan

    bad = sc.write_pickle_exploit(tmp_path / "model.pt", tmp_path / "marker")
    report = third_party_scan(bad)
    assert report.infected and report.dangerous
    assert report.tool.startswith("picklescan")
    assert not (tmp_path / "marker").exists()  # scanning never runs the payload
    good = tmp_path / "clean.pt"
    torch.save({"w": torch.ones(2)}, good)
    clean = third_party_scan(good)
    assert not clean.infected and not clean.dangerous
