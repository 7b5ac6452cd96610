"""Options and output paths are checked before any work: bounded integers refused by argparse
naming the option, unwritable outputs named by their real path, figure formats from the suffix,
long legal names written, and JSON strict for file names that are not UTF-8."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import sdpsfnet.files
from sdpsfnet.training.checkpoint import save_checkpoint
from sdpsfnet.cli import main
from sdpsfnet.data import save_image
from sdpsfnet.models.registry import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    model = build_model("tiny")
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "build_spec": model.build_spec}, path)
    return str(path)


@pytest.mark.parametrize("args,option", [
    (["models", "--macs", "--size", "0"], "--size"), (["models", "--macs", "--size", "-5"], "--size"),
    (["synth", "--clean", "c", "--out", "o", "--seed", str(2 ** 70)], "--seed"),
    (["synth", "--clean", "c", "--out", "o", "--seed", "-1"], "--seed"),
    (["train", "--seed", str(2 ** 63)], "--seed"),
    (["derain", "--ckpt", "c", "i", "--out", "o", "--tile", "1"], "--tile"),
    (["eval", "--ckpt", "c", "--data", "d", "--tile", "63"], "--tile"),
    (["derain", "--ckpt", "c", "i", "--out", "o", "--tile", "64", "--overlap", "64"], "--overlap"),
])
def test_out_of_range_integers_are_refused_by_argparse_naming_the_option(capsys, args, option):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"sdpsfnet {args[0]}: error: argument {option}: must be" in err


def test_unwritable_outputs_are_named_before_any_work(ckpt, tmp_path, capsys, monkeypatch):
    save_image(torch.rand(3, 16, 16), tmp_path / "in" / "a.png")
    (tmp_path / "file").write_text("x")
    (tmp_path / "o" / "a.png").mkdir(parents=True)
    (tmp_path / "json").mkdir()
    cases = {
        "derain --out a file": (["derain", "--ckpt", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / "file")],
                                "is a file, not a folder"),
        "OUT/a.png a folder": (["derain", "--ckpt", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / "o")],
                               f"cannot write {tmp_path / 'o' / 'a.png'}: it is a folder"),
        "--json a folder": (["metrics", str(tmp_path / "in"), str(tmp_path / "in"), "--json", str(tmp_path / "json")],
                            f"cannot write {tmp_path / 'json'}: it is a folder"),
        "export below a file": (["export", "--ckpt", ckpt, "--out", str(tmp_path / "file" / "m.pt2")],
                                "is a file, not a folder"),
        "train --out a file": (["train", "--out", str(tmp_path / "file")], "is a file, not a folder"),
    }
    for name, (args, message) in cases.items():
        assert main(args + ["--no-progress"] * (args[0] != "export")) == 1, name
        out, err = capsys.readouterr()
        assert message in err and err.count("\n") == 1 and out in ("", out * (args[0] == "train")), name
    real_access = os.access
    monkeypatch.setattr(sdpsfnet.files.os, "access", lambda p, mode: str(p) != str(tmp_path / "ro") and real_access(p, mode))
    (tmp_path / "ro").mkdir()
    assert main(["derain", "--ckpt", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / "ro" / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'ro' / 'x' / 'a.png'}: permission denied in {tmp_path / 'ro'}" in err


def test_a_failed_write_names_the_real_path_not_the_temporary_file(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sdpsfnet.files.os, "fsync", disk_full)
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'a.png'}: No space left on device"):
        save_image(torch.rand(3, 4, 4), tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_long_legal_output_names_are_written(tmp_path):
    for length in (242, 255):
        path = tmp_path / ("a" * (length - 4) + ".png")
        save_image(torch.rand(3, 4, 4), path)
        assert path.is_file()


def test_show_psf_writes_the_format_its_suffix_names(ckpt, tmp_path, capsys):
    from sdpsfnet.evaluation.psf_figures import show_psf

    model = build_model("tiny")
    for suffix, head in {"jpg": b"\xff\xd8", "svg": b"<?xml"}.items():  # (png: test_cli.py)
        show_psf(model, str(tmp_path / f"psf.{suffix}"))
        assert (tmp_path / f"psf.{suffix}").read_bytes().startswith(head), suffix
    assert main(["show-psf", "--ckpt", ckpt, "--out", str(tmp_path / "psf.gif")]) == 1
    assert "the suffix picks the format" in capsys.readouterr().err
    assert not (tmp_path / "psf.gif").exists()


def test_json_is_strict_utf8_for_file_names_that_are_not(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_image(torch.rand(3, 16, 16), tmp_path / "x.png")
        os.rename(tmp_path / "x.png", os.fsencode(tmp_path / sub) + b"/\xffname.png")
    assert main(["metrics", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "m.json"),
                 "--no-progress"]) == 0
    text = (tmp_path / "m.json").read_bytes().decode("utf-8")  # strict UTF-8
    names = [row["name"] for row in json.loads(text)["per_image"]]
    assert names == ["\\xffname"]
    names[0].encode("utf-8")  # no lone surrogates
