"""champion stage: which registered version is champion now, written to models/champion.json.

The champion lives in the MLflow registry (the `champion` alias), outside the project. This stage asks the
registry, downloads that version's weights and its prepared data snapshot into .cache/registry/ (once per
version) and writes a small manifest: validate and drift compare this run's data with the champion's
training split, evaluate scores the champion on this run's test rows and on its own (the retention set).
With no champion yet the manifest says so, and the first-model rule applies downstream.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Config, ConfigError, load_config
from tasks.paths import ProjectPaths
from tasks.registry import CHAMPION, Registry, RegistryError
from tasks.runtime import configure_environment, stage_logging

log = logging.getLogger("transferline.champion")

PREPARED_ARTIFACT = "prepared"  # the run's prepared snapshot, logged with every registered version's run


@dataclass(frozen=True)
class Champion:
    version: str
    model_dir: Path
    data_dir: Path | None  # the champion's prepared snapshot (train/validation/test), if its run logged it
    tags: dict[str, str] = field(default_factory=dict)  # its lineage tags (see promote.lineage_tags)
    test_accuracy: float | None = None

    def trained_on(self, inputs: dict[str, str]) -> bool:
        """True when this champion was trained on exactly these inputs (see promote.run_inputs): a run
        with them would reproduce it, so there is nothing to validate, train, evaluate or promote."""
        return all(self.tags.get(key) == value for key, value in inputs.items())

    @property
    def retention_file(self) -> Path | None:
        """The champion's own test split: what a challenger must not forget."""
        return self.data_dir / "test.parquet" if self.data_dir else None

    def reference(self) -> pd.DataFrame | None:
        """The champion's training split: what new data should resemble (validation, drift)."""
        path = self.data_dir / "train.parquet" if self.data_dir else None
        if path is None or not path.is_file():
            return None
        frame = pd.read_parquet(path)
        frame.attrs["snapshot"] = str(self.data_dir)  # where its files are (tasks whose inputs are files)
        return frame


def resolve_champion(registry: Registry, model_name: str, paths: ProjectPaths) -> Champion | None:
    """The version holding `champion`, its weights and data snapshot downloaded; None when there is none."""
    info = registry.get_alias(model_name, CHAMPION)
    if info is None:
        log.info("no champion for %s yet: the first-model rule applies", model_name)
        return None
    dest = paths.registry_cache / model_name / f"v{info.version}"
    model_dir = registry.download_model_dir(model_name, info.version, dest / "model")
    data_dir = None
    if info.run_id:
        try:
            data_dir = registry.download_run_artifact(info.run_id, PREPARED_ARTIFACT, dest / "data")
        except RegistryError as err:  # a champion logged without its data: the gate and drift say so
            log.warning("champion v%s has no logged data snapshot (%s)", info.version, err)
    return Champion(info.version, model_dir, data_dir, dict(info.tags), info.metrics.get("test_accuracy"))


def write_manifest(paths: ProjectPaths, model_name: str, champion: Champion | None) -> None:
    """models/champion.json: the same bytes for the same champion, so DVC re-runs nothing downstream
    when the registry did not change (paths relative to the project, keys sorted, no timestamps)."""
    data: dict = {"model_name": model_name, "version": None}
    if champion is not None:
        data.update(
            version=champion.version,
            model_dir=paths.rel(champion.model_dir),
            data_dir=paths.rel(champion.data_dir) if champion.data_dir else None,
            tags=champion.tags,
            test_accuracy=champion.test_accuracy,
        )
    paths.champion_manifest.parent.mkdir(parents=True, exist_ok=True)
    paths.champion_manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_champion(paths: ProjectPaths) -> Champion | None:
    """The champion the champion stage resolved (None: there was none), from models/champion.json."""
    if not paths.champion_manifest.is_file():
        raise FileNotFoundError(f"{paths.champion_manifest} is missing: run the champion stage first")
    data = json.loads(paths.champion_manifest.read_text())
    if data["version"] is None:
        return None
    model_dir = paths.root / data["model_dir"]
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir} (champion v{data['version']}) is missing: run `dvc repro champion` to download it"
        )
    data_dir = paths.root / data["data_dir"] if data["data_dir"] else None
    return Champion(data["version"], model_dir, data_dir, data["tags"], data["test_accuracy"])


def run_champion(registry: Registry, cfg: Config, paths: ProjectPaths) -> Champion | None:
    """Resolve the champion and write models/champion.json: what the flow and `dvc repro` both run."""
    champion = resolve_champion(registry, cfg.registry.model_name, paths)
    write_manifest(paths, cfg.registry.model_name, champion)
    return champion


@task(name="find-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def champion_task(registry: Registry, cfg: Config, paths: ProjectPaths) -> Champion | None:
    """The current champion's weights and data snapshot, downloaded once per version (cached)."""
    return run_champion(registry, cfg, paths)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.champion`` from the project root."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        cfg = load_config(paths.params)
        champion = run_champion(Registry.for_project(paths), cfg, paths)
    except (ConfigError, RegistryError) as err:
        print(f"champion: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    name = cfg.registry.model_name
    print(f"champion: {name} v{champion.version}" if champion else f"champion: {name} has none yet")


if __name__ == "__main__":
    main()
