"""Every file and folder transferline reads or writes, relative to one project root.

dvc.yaml names the same paths; tests/unit/test_layout.py checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Lineage file inside a saved model folder (task, labels, max length, data and params hashes, base model).
METADATA_FILE = "transferline.json"


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> ProjectPaths:
        return cls(Path(root).resolve())

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def display(self, path: Path) -> Path:
        """How messages show a path: relative to the project when inside it, else as given."""
        try:
            return Path(self.rel(path))
        except ValueError:
            return path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_yaml(self) -> Path:
        """The pipeline's stages, generated from tasks/stages.py."""
        return self.root / "dvc.yaml"

    # -- data: prepared snapshot (a DVC output) -------------------------------------------------------
    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    def split_file(self, split: str) -> Path:
        return self.prepared_dir / f"{split}.parquet"

    @property
    def prepared_manifest(self) -> Path:
        return self.prepared_dir / "manifest.json"

    @property
    def raw_dir(self) -> Path:
        """Where users put their own source files (each `dvc add`-ed); a dependency of prepare."""
        return self.root / "data" / "raw"

    # -- reports ---------------------------------------------------------------------------------------
    @property
    def validation_dir(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def drift_dir(self) -> Path:
        """Drift of this run's training data against the champion's: report.json, summary.md, drift.png."""
        return self.root / "reports" / "drift"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "reports" / "evaluation"

    @property
    def metrics_file(self) -> Path:
        return self.evaluation_dir / "metrics.json"

    @property
    def predictions_file(self) -> Path:
        """actual,predicted per test row: DVC's confusion-matrix plot reads it."""
        return self.evaluation_dir / "predictions.csv"

    @property
    def confusion_png(self) -> Path:
        return self.evaluation_dir / "confusion_matrix.png"

    @property
    def evaluation_file(self) -> Path:
        """Every score of the evaluate stage (both models, per row; retention; budgets): the gate's input."""
        return self.evaluation_dir / "evaluation.json"

    @property
    def gate_report(self) -> Path:
        return self.root / "reports" / "gate.md"

    @property
    def gate_json(self) -> Path:
        return self.root / "reports" / "gate.json"

    # -- models ----------------------------------------------------------------------------------------
    @property
    def base_manifest(self) -> Path:
        return self.root / "models" / "base.json"

    @property
    def challenger_dir(self) -> Path:
        return self.root / "models" / "challenger"

    @property
    def champion_manifest(self) -> Path:
        """Which registered version is champion (or that none is), and where its files were downloaded."""
        return self.root / "models" / "champion.json"

    @property
    def results_dir(self) -> Path:
        """Evidence tables and plots of `transferline experiment` (committed: docs/evidence.md shows them)."""
        return self.root / "docs" / "results"

    # -- local state, never versioned ------------------------------------------------------------------
    @property
    def model_cache(self) -> Path:
        return self.root / ".cache" / "models"

    @property
    def checkpoints_dir(self) -> Path:
        """Training checkpoints, one folder per run identity; removed once the run's model is saved."""
        return self.root / ".cache" / "checkpoints"

    @property
    def registry_cache(self) -> Path:
        return self.root / ".cache" / "registry"

    @property
    def serving_cache(self) -> Path:
        """Versions downloaded by `transferline serve` / batch-predict (apart from the flow's copies, so a
        version refused by verification can be deleted without touching a running flow's files)."""
        return self.root / ".cache" / "serving"

    @property
    def task_results(self) -> Path:
        """Prefect's persisted task results and cache records (tasks/caching.py); safe to delete."""
        return self.root / ".cache" / "prefect-results"

    @property
    def run_lock(self) -> Path:
        """Held by the run using this folder (tasks/workspace.py); describes that run while it lives."""
        return self.root / ".cache" / "run.lock"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME of the local server `transferline up` starts: its SQLite database, PIDs, logs."""
        return self.root / ".prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"
