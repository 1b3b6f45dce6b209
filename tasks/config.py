"""params.yaml -> typed, validated config: the one place YAML is read.

Every setting lives in params.yaml (with a one-line comment); these models only give the values types
and bounds, so they carry no defaults of their own. Errors name the key, e.g. ``train.learning_rate``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.kinds.image_config import ImageConfig
from tasks.kinds.token_config import NerConfig


class ConfigError(ValueError):
    """params.yaml or an override is invalid; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = Field(min_length=1)
    text_column: str = Field(min_length=1)
    label_column: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    label_map: dict[str, str]
    max_rows: int | None = Field(gt=0)
    val_size: float = Field(gt=0, lt=1)
    test_size: float = Field(gt=0, lt=1)
    drop_duplicates: bool
    seed: int

    @field_validator("labels", "label_map", mode="before")
    @classmethod
    def _labels_as_text(cls, value: object) -> object:
        # Data columns are normalised to strings, so `labels: [0, 1]` must mean "0" and "1".
        def text(v: object) -> object:
            return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

        if isinstance(value, list):
            return [text(v) for v in value]
        if isinstance(value, dict):
            return {text(k): text(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must differ")
        if self.val_size + self.test_size >= 0.9:
            raise ValueError(
                f"val_size + test_size = {self.val_size + self.test_size:g} leaves too little to train on"
                " (must be < 0.9)"
            )
        return self


class TaskConfig(_Section):
    """Which task the project trains: a name of the table in tasks/kinds/__init__.py."""

    type: str = Field(min_length=1)

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        from tasks.kinds import TASKS

        if value not in TASKS:
            raise ValueError(f"{value!r} is not a known task; known: {', '.join(sorted(TASKS))}")
        return value


class ValidateConfig(_Section):
    min_text_chars: int = Field(ge=1)
    max_text_chars: int = Field(ge=1)
    max_duplicate_rate: float = Field(ge=0, lt=1)
    min_rows_per_class: int = Field(ge=1)
    reference_label_tolerance: float = Field(gt=0, le=1)
    reference_length_tolerance: float = Field(gt=0)
    reference_min_vocab_coverage: float = Field(ge=0, le=1)
    data_docs: bool = True

    @model_validator(mode="after")
    def _check(self) -> ValidateConfig:
        if self.max_text_chars < self.min_text_chars:
            raise ValueError("max_text_chars must be >= min_text_chars")
        return self


DriftPolicy = Literal["ignore", "warn", "block"]
# What adapts during fine-tuning (tasks/transfer.py implements each) and how the gate compares with the
# champion (tasks/gate.py): the flow's run form and the CLI take their choices from here.
Strategy = Literal["head", "freeze", "full", "gradual", "lora"]
# `auto` searches the strategies and their learning rates within train.time_budget_s (tasks/search.py).
AUTO = "auto"
StrategyChoice = Literal[Strategy, "auto"]
# Seconds `auto`'s search may take (train.time_budget_s); a week at most, beyond which it is surely a typo.
TimeBudget = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]
GateMode = Literal["superiority", "non_inferiority"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
GATE_MODES: tuple[str, ...] = get_args(GateMode)


class DriftConfig(_Section):
    label: DriftPolicy
    length: DriftPolicy
    oov: DriftPolicy
    embedding: DriftPolicy
    max_label_psi: float = Field(gt=0)
    alpha: float = Field(gt=0, le=0.5)
    max_oov_increase: float = Field(ge=0, le=1)
    sample_rows: int = Field(ge=20, le=100_000)
    permutations: int = Field(ge=20, le=100_000)
    seed: int


class ModelConfig(_Section):
    source: str = Field(min_length=1)


class TrainConfig(_Section):
    strategy: StrategyChoice
    time_budget_s: TimeBudget
    epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=4096)
    learning_rate: float = Field(gt=0, le=1)
    layer_lr_decay: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, le=1)
    rdrop_alpha: float = Field(ge=0, le=100)
    adversarial_eps: float = Field(ge=0, le=100)
    warmup_ratio: float = Field(ge=0, lt=1)
    max_length: int = Field(ge=8, le=512)
    freeze_embeddings: bool
    freeze_layers: int = Field(ge=0)
    unfreeze_every_steps: int = Field(ge=0)
    cache_frozen: bool
    lora_rank: int = Field(ge=1, le=1024)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    lora_target_modules: list[str] = Field(min_length=1)
    early_stopping_patience: int = Field(ge=0)
    checkpoint_every_steps: int = Field(ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    device: Literal["auto", "cpu", "cuda"]
    num_threads: int = Field(ge=0)
    seed: int

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.strategy == AUTO and self.adversarial_eps:
            raise ValueError(
                "adversarial_eps shifts the word embeddings, which most strategies auto tries keep fixed:"
                " set it to 0 for auto, or name a strategy"
            )
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(ge=1, le=4096)
    latency_inputs: int = Field(ge=2, le=10_000)
    latency_windows: int = Field(ge=1, le=100)


class GateConfig(_Section):
    min_accuracy: float = Field(ge=0, le=1)
    mode: GateMode
    min_improvement: float = Field(ge=-1, le=1)
    margin: float = Field(ge=0, le=1)
    alpha: float = Field(gt=0, le=0.5)
    bootstrap_samples: int = Field(ge=100, le=100_000)
    seed: int
    max_class_drop: float = Field(ge=0, le=1)
    max_forgetting: float = Field(ge=0, le=1)
    max_latency_ms: float = Field(gt=0)
    max_weights_mb: float = Field(gt=0)


class PromoteConfig(_Section):
    require_approval: bool
    approval_timeout_s: int = Field(ge=1, le=7 * 24 * 3600)


class RegistryConfig(_Section):
    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    experiment: str = Field(min_length=1)


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]+$")


class OpsConfig(_Section):
    """How the pipeline is operated (schedule, worker, server); never changes what a run produces."""

    schedule: str = Field(min_length=1)
    timezone: str = Field(min_length=1)
    work_pool: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data_watch_interval_s: int = Field(ge=10, le=7 * 24 * 3600)
    port: int = Field(ge=1024, le=65535)
    run_lock_wait_s: float = Field(ge=0, le=7 * 24 * 3600)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Paris)") from None
        return value


# Sections that decide what a run produces: the params hash recorded on every version covers these.
# `ops` is left out: moving the schedule or the port must not make an identical model look new.
OPERATIONS_SECTIONS = ("ops",)


class Config(_Section):
    """The whole of params.yaml. Each stage receives only the sections it reads."""

    task: TaskConfig
    data: DataConfig
    image: ImageConfig  # read only by image classification (tasks/kinds/image_config.py)
    ner: NerConfig  # read only by token classification (tasks/kinds/token_config.py)
    validate_: ValidateConfig = Field(alias="validate")
    drift: DriftConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    gate: GateConfig
    promote: PromoteConfig
    registry: RegistryConfig
    ops: OpsConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self, *keys: str) -> str:
        """sha256 of the named params: sections (``train``) or dotted keys (``data.labels``), as a stage
        declares them in tasks/stages.py; when none are named, every section but `ops`."""
        full = self.to_dict()
        names = keys or tuple(k for k in full if k not in OPERATIONS_SECTIONS)
        picked = {name: _lookup(full, name) for name in names}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    """The value of a section or dotted key of params data, or ConfigError naming the unknown key."""
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(_unknown(dotted, part, sorted(value) if isinstance(value, dict) else []))
        value = value[part]
    return value


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.epochs=1", "data.labels=[a, b]"]`` -> ``{"train.epochs": 1, ...}``.

    Values are read as YAML, so numbers, booleans, null and lists keep their types; ``1e-4`` (which YAML
    1.1 reads as a string) is accepted as a float.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str) and any(c in value.lower() for c in ".e"):
            with contextlib.suppress(ValueError):
                value = float(value)
        out[key] = value
    return out


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = merged
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                known = sorted(k for k, v in node.items() if isinstance(v, dict))
                raise ConfigError(_unknown(".".join(parts[: depth + 1]), part, known))
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(_unknown(dotted, parts[-1], sorted(node)))
        node[parts[-1]] = value
    return merged


def _unknown(dotted: str, name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"{dotted}: unknown key{suggestion}; known keys here: {', '.join(known)}"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names (as written in params.yaml) of the section that holds the key at loc."""
    model: Any = Config
    for part in loc[:-1]:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _format(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {_unknown(key, str(e['loc'][-1]), _known_keys(e['loc']))}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing (every key must be set in params.yaml)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid parameters in {origin}:\n" + "\n".join(lines)


def config_from_dict(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, origin: str = "params"
) -> Config:
    """Validate plain params data (plus dotted-key overrides) into a Config, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        merged = _apply_overrides(raw, overrides or {})
    except ConfigError as err:
        raise ConfigError(f"invalid override for {origin}:\n  {err}") from None
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format(err, origin)) from None


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml once and validate it, with optional ``section.key`` overrides."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the project folder or pass --project)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(raw, overrides, origin=str(path))


def describe_params(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, value, comment) for every setting of params.yaml, for ``transferline params``."""
    rows: list[tuple[str, str, str]] = []
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body, _, comment = line.partition("  #")
        if not line.startswith(" "):
            section = body.strip().rstrip(":")
            continue
        key, _, value = body.strip().partition(":")
        rows.append((f"{section}.{key}", value.strip(), comment.strip()))
    return rows
