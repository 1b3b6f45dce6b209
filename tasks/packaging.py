"""Hugging Face <-> MLflow packaging: a save_pretrained folder in, an MLflow transformers model out, and back.

The registry adapter (tasks/registry.py) decides where and when a model is logged or downloaded; this module
knows what the logged model is made of: the components, the signature, the pip requirements, the input
example MLflow predicts once at logging, and the folder layout of the transformers flavor. mlflow and
transformers are imported inside functions: each costs seconds at import.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

TASK = "text-classification"
ARTIFACT_NAME = "model"  # the logged model's name within its run
# What the registered pyfunc model is asked to predict when it is logged: MLflow runs it once through
# the serving path, so a model that cannot predict is never registered.
INPUT_EXAMPLE = ["a great movie", "a dull and lifeless film"]
# Packages the served model needs; exact versions are read at run time. An explicit list also
# avoids mlflow.transformers' default requirements, which import torchvision (not installed).
PIP_PACKAGES = ("mlflow", "transformers", "torch", "accelerate")


def load_hf(model_dir: Path) -> dict[str, Any]:
    """What log_model logs for the model folder, by the flavor of the task it was trained for (its
    transferline.json): model + tokenizer for the transformers flavor, the folder itself for a pyfunc."""
    from tasks.kinds import task_of_model

    flavor = task_of_model(model_dir).mlflow_flavor
    parts = PARTS[flavor](model_dir)
    return {**parts, FLAVOR_KEY: flavor}


def _pyfunc_parts(model_dir: Path) -> dict[str, Any]:
    """The folder and the module its task logs as the model's code (TaskKind.pyfunc_code)."""
    from tasks.kinds import task_of_model

    return {"model_dir": model_dir, "code": task_of_model(model_dir).pyfunc_code}


def _transformers_parts(model_dir: Path) -> dict[str, Any]:
    """Model + tokenizer of a save_pretrained folder, as mlflow.transformers.log_model takes them.

    Logging the folder path itself fails with transformers 5 (mlflow 3.17's local-checkpoint branch
    expects pipeline classes where transformers now keeps names), so the components are loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return {
        # safetensors only: a stray pickled pytorch_model.bin in the folder is never unpickled
        "model": AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }


def pip_requirements() -> list[str]:
    """``package==version`` of PIP_PACKAGES as installed here (absent optional ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    reqs = []
    for package in PIP_PACKAGES:
        try:
            # Drop local labels (torch "2.13.0+cpu"): PyPI cannot resolve them, as MLflow itself does.
            reqs.append(f"{package}=={Version(version(package)).public}")
        except PackageNotFoundError:
            continue  # accelerate is optional for inference
    return reqs


def signature() -> ModelSignature:
    """A list of strings in; the text-classification pyfunc answers one (label, score) row per text."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def log_model(parts: dict[str, Any], *, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """Log `parts` (from load_hf) into the active MLflow run and register it; returns the new version.

    Args:
        parts: as load_hf returns them (its flavor chooses how they are logged).
        model_name, run_id, tags: as _log_transformers takes them.
    """
    parts = dict(parts)
    flavor = parts.pop(FLAVOR_KEY, "transformers")
    return LOGGERS[flavor](parts, model_name=model_name, run_id=run_id, tags=tags)


def _log_transformers(parts: dict[str, Any], *, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """Log `parts` as an MLflow transformers model and register it; returns the new version.

    Args:
        parts: {"model", "tokenizer"} as _transformers_parts returns them.
        model_name: the registered model that receives the version.
        run_id: the active run (named in the model card).
        tags: set on the version from its creation, so a version orphaned by a crash still carries
            them (find_version(run_key) lets a re-run reuse it).
    """
    import mlflow
    from huggingface_hub import ModelCard

    info = mlflow.transformers.log_model(
        parts,
        name=ARTIFACT_NAME,
        task=TASK,
        pip_requirements=pip_requirements(),
        input_example=INPUT_EXAMPLE,
        signature=signature(),
        registered_model_name=model_name,
        tags={key: str(value) for key, value in tags.items()},
        # An explicit card stops MLflow from looking the model up on the Hugging Face Hub.
        model_card=ModelCard(
            f"---\nlibrary_name: transformers\npipeline_tag: {TASK}\n---\n"
            f"# {model_name}\n\nFine-tuned by transferline in MLflow run {run_id}.\n"
        ),
    )
    return str(info.registered_model_version)


def _log_pyfunc(parts: dict[str, Any], *, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """Log the model folder as a pyfunc model from code (``parts["code"]``, e.g.
    tasks/kinds/image_pyfunc.py, with this package as its code; its ``logged_io()`` gives the input example,
    signature and extra requirements) and register it; MLflow predicts the input example once, so a model
    that cannot predict is never registered. Returns the new version."""
    import mlflow

    # written out, not imported by name: the pyfunc code is code of the stages that log models
    # (tasks/stages.py follows imports), so changing it gives a new code identity
    from tasks.kinds import image_pyfunc, token_pyfunc

    module = {m.__name__: m for m in (image_pyfunc, token_pyfunc)}[parts["code"]]
    code = Path(module.__file__)
    package = code.parents[1]  # tasks/: the model's code, loaded by MLflow beside the artifact
    example, model_signature, requirements = module.logged_io()
    info = mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME,
        python_model=str(code),
        artifacts={module.MODEL_ARTIFACT: str(parts["model_dir"])},
        code_paths=[str(package)],
        pip_requirements=[*pip_requirements(), *requirements],
        input_example=example,
        signature=model_signature,
        registered_model_name=model_name,
        tags={key: str(value) for key, value in tags.items()},
    )
    return str(info.registered_model_version)


FLAVOR_KEY = "flavor"
PARTS = {"transformers": _transformers_parts, "pyfunc": _pyfunc_parts}
LOGGERS = {"transformers": _log_transformers, "pyfunc": _log_pyfunc}


def unpack_hf(download: Path, into: Path) -> bool:
    """Turn a downloaded transformers-flavor model (the folder holding MLmodel) into one folder that
    from_pretrained loads, at `into` (which must not exist). False when it is not a transformers model.

    The flavor stores weights + config under ``model/`` and the tokenizer under
    ``components/tokenizer/``; the tokenizer files are copied beside the weights.
    """
    from mlflow.models import Model

    flavor = Model.load(str(download / "MLmodel")).flavors.get("transformers")
    if flavor is None:
        return _unpack_pyfunc(download, into)
    shutil.copytree(download / flavor.get("model_binary", "model"), into)
    for component in flavor.get("components", []):
        for f in (download / "components" / component).iterdir():
            if not (into / f.name).exists():  # the model folder's own files win
                shutil.copy2(f, into / f.name)
    return True


def _unpack_pyfunc(download: Path, into: Path) -> bool:
    """A pyfunc model logged by _log_pyfunc: its model-folder artifact, copied to `into`."""
    folders = sorted(p.parent for p in (download / "artifacts").glob("*/config.json"))
    if not folders:
        return False
    shutil.copytree(folders[0], into)
    return True
