import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import labsupport as ls
from labsupport.io import (
    IntegrityError,
    atomic_write_bytes,
    load_weights,
    read_verified_text,
    save_weights,
    write_verified_text,
)


def test_safetensors_roundtrip(tmp_path):
    model = ls.MLP()
    path = ls.save_model(tmp_path / "m.safetensors", model, {"note": "hi"})
    other = ls.load_model(path, ls.MLP())
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    with pytest.raises(TypeError, match="tensors must be a dict of name -> torch.Tensor"):
        ls.io.save_weights(tmp_path / "w.safetensors", {"a": [1, 2]})
    assert not list(tmp_path.glob(".tmp-*"))


def test_failed_write_leaves_old_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with ls.io.atomic_open(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("kind", ["bytes", "weights"])
def test_killed_write_leaves_no_corrupt_file(tmp_path, kind):
    """SIGKILL a process in the middle of a cache write: the target is absent or the old file."""
    target = tmp_path / "cache.safetensors"
    save_weights(target, {"w": torch.zeros(3)})
    script = textwrap.dedent(f"""
        import sys, time, torch
        from labsupport import io
        if {kind!r} == "bytes":
            with io.atomic_open({str(target)!r}) as h:
                h.write(b"x" * 1000)
                h.flush()
                print("writing", flush=True)
                time.sleep(60)
        else:
            import safetensors.torch as st
            real = st.save_file
            def slow(*a, **k):
                real(*a, **k)
                print("writing", flush=True)
                time.sleep(60)
            io.save_file = slow
            io.save_weights({str(target)!r}, {{"w": torch.ones(1000)}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.equal(load_weights(target)["w"], torch.zeros(3))  # old content, intact


def test_verified_text_round_trip_and_refusals(tmp_path):
    path = write_verified_text(tmp_path / "t.json", 'a "text" with ünïcode\n')
    assert read_verified_text(path) == 'a "text" with ünïcode\n'
    doc = json.loads(path.read_text())
    doc["content"] = doc["content"].replace("a ", "b ")          # valid JSON, changed text
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not match"):
        read_verified_text(path)
    for bad in (b'{"content": "x"', b"[1, 2]", b'{"content": 3, "content_sha256": "0"}'):  # cut, not ours, no text
        path.write_bytes(bad)
        with pytest.raises(IntegrityError, match="not a verified text file"):
            read_verified_text(path)
    with pytest.raises(TypeError, match="text must be a string"):
        write_verified_text(tmp_path / "u.json", b"bytes")
