"""Every setting of the service, read from the environment (``KIWI_*``, optional ``.env``) in one place.

Nothing else in the package reads the environment. ``kiwi serve`` flags override these values, and
tests build a ``Settings(...)`` directly and pass it to ``create_app``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from recommender.active.strategies import PER_NOTE
from recommender.errors import ConfigError
from recommender.formats.layers import DEFAULT_LAYERS, LayerMapping

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)

DEFAULT_MODEL = "default"  # the name of the main served model (the promoted one, or --model)
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class RecommenderConfig(BaseModel):
    """One INCEpTION recommender (the ``{name}`` in ``/inception/{name}/predict``) and its layers.

    ``task`` says what it suggests: ``entities`` (main entities and modifiers on the span layer) or
    ``relations`` (hasAttr between spans already in the CAS). The layer and feature of a request must
    be the ones named here; a project with its own layer names configures them here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["entities", "relations"]
    span_type: str = DEFAULT_LAYERS.span_type
    span_feature: str = DEFAULT_LAYERS.span_feature
    relation_type: str = DEFAULT_LAYERS.relation_type
    relation_feature: str = DEFAULT_LAYERS.relation_feature
    governor: str = DEFAULT_LAYERS.governor
    dependent: str = DEFAULT_LAYERS.dependent

    @property
    def layers(self) -> LayerMapping:
        return LayerMapping(
            span_type=self.span_type,
            span_feature=self.span_feature,
            relation_type=self.relation_type,
            relation_feature=self.relation_feature,
            governor=self.governor,
            dependent=self.dependent,
        )

    @property
    def layer(self) -> str:
        """The UIMA type this recommender writes its suggestions into."""
        return self.span_type if self.task == "entities" else self.relation_type


def _default_recommenders() -> dict[str, RecommenderConfig]:
    return {"entities": RecommenderConfig(task="entities"), "relations": RecommenderConfig(task="relations")}


class ProcessSettings(BaseSettings):
    """How a process shares the cores (``recommender/cores.py``): read on its own at the start of every
    entry point, before torch is imported, so a bad service setting cannot stop ``kiwi --help``."""

    model_config = SettingsConfigDict(
        env_prefix="KIWI_", env_file=".env", extra="ignore", populate_by_name=True
    )

    omp_wait_policy: Literal["passive", "active"] = Field(
        "passive",
        validation_alias=AliasChoices("KIWI_OMP_WAIT_POLICY", "OMP_WAIT_POLICY"),
        description="OpenMP threads with nothing to do sleep (passive) or spin (active); spinning threads "
        "of two processes on the same cores slowed each 12x: active only for one process on dedicated cores",
    )
    threads: int | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("KIWI_THREADS", "OMP_NUM_THREADS"),
        description="OpenMP/torch threads of the process (default: the cores available to it, CPU "
        "affinity and cgroup quota included)",
    )
    trainer_threads: int | None = Field(
        None,
        gt=0,
        description="threads of a training job (default: half the process's threads beside the API, "
        "all of them in --role trainer)",
    )
    precompute_threads: int | None = Field(
        None, gt=0, description="threads of the background precompute worker (default: half)"
    )

    @field_validator("omp_wait_policy", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class Settings(ProcessSettings):
    """The service configuration. Environment variables are the field names with prefix ``KIWI_``."""

    # --- server ----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to bind; loopback unless auth is configured")
    port: int = Field(5000, ge=0, le=65535, description="TCP port (0 = any free port)")
    max_request_bytes: int = Field(50_000_000, gt=0, description="larger request bodies get 413")
    log_note_text: bool = Field(False, description="allow note text in debug logs (PHI: keep off)")
    predict_lanes: int = Field(
        2,
        gt=0,
        description="model calls run at once, each on cores / lanes threads; on 2 cores 2 lanes served "
        "30% more notes per second than 1 (1 lane is faster for a lone request: 0.12 s vs 0.19 s)",
    )
    max_lanes_per_client: int | None = Field(
        None,
        gt=0,
        description="cap on the lanes one client (peer address) holds even when no one else waits; "
        "without it a freed lane still goes to the waiting client that holds the fewest",
    )
    max_note_chars: int = Field(
        200_000, gt=0, description="longer notes get 413 at once (pre-annotate them with `kiwi predict`)"
    )
    predict_budget_seconds: float = Field(
        60.0,
        ge=0,
        description="time a prediction request may take: waiting for a lane past it is 503, and a "
        "Label Studio batch is answered with the tasks done by then (Label Studio gives up at 100 s)",
    )

    # --- models ----------------------------------------------------------------------------------
    model_dir: Path = Field(
        Path("kiwi_models"), description="versioned models and their promoted pointer (registry.json)"
    )
    model: Path | None = Field(None, description="serve this model folder instead of the promoted one")
    trainer: str = Field("kiwi.encoder.v1", description="extractor trained by the retraining loop")
    trainer_config: dict[str, Any] = Field(
        default_factory=dict,
        description='training settings of the trainer\'s family for retraining jobs (JSON: {"max_steps": 50} '
        "for kiwi.llama.v1); `kiwi train FAMILY --help` lists them",
    )
    serve_models: dict[str, Path] = Field(
        default_factory=dict,
        description='more models served beside the main one, by name (JSON: {"llama": "DIR"}); each '
        "answers INCEpTION at /inception/NAME/entities and /inception/NAME/relations and Label Studio at "
        "/labelstudio/NAME; the main one is also reachable as NAME default",
    )
    llama_engine: Literal["transformers", "openai"] | None = Field(
        None,
        description="generation engine of served LLaMA models, replacing the one in the model's config: "
        "transformers (in process), openai (an OpenAI-compatible server: vLLM on a GPU or CPU host)",
    )
    llama_engine_url: str | None = Field(
        None, description="base URL of the OpenAI-compatible server (llama_engine openai)"
    )
    llama_engine_model: str | None = Field(
        None,
        description="model name the server knows the LLaMA by (llama_engine openai); default: the model "
        "version, under which the service loads the model's adapter into a vLLM server at run time",
    )
    llama_engine_structured_outputs: bool | None = Field(
        None,
        description="send the copy-or-tag constraint as vLLM's structured_outputs (llama_engine openai); "
        "default: when the server is vLLM",
    )
    llama_engine_timeout_s: float | None = Field(
        None,
        gt=0,
        description="seconds one completion request may take (llama_engine openai; the model's config says "
        "120): a server on few CPU cores with many requests queued needs more",
    )
    llama_engine_concurrency: int | None = Field(
        None,
        ge=1,
        description="completion requests in flight at once (llama_engine openai; the model's config says 4)",
    )
    fallback_model: str = Field(
        DEFAULT_MODEL,
        description="served model that answers when a slow model's (LLaMA's) prediction is not cached "
        "yet: its prediction is sent, marked as a fallback, and the note is queued for the slow model",
    )
    miss_budget_seconds: float = Field(
        2.0,
        ge=0,
        description="time a cache miss may take to answer with the fallback model's prediction "
        "(waiting for a compute lane past it is 503); generation never runs in a request",
    )
    precompute: bool = Field(
        True, description="compute queued predictions of slow models in a background worker of this process"
    )
    precompute_attempts: int = Field(
        3, gt=0, description="attempts at a note's prediction before it is reported failed"
    )
    precompute_timeout_seconds: float = Field(
        900.0,
        gt=0,
        description="a prediction running this long (its worker died or hung) counts as a failed attempt",
    )
    train_epochs: int = Field(
        3, gt=0, description="epochs per retraining job (encoder); a first model trains to early stopping"
    )
    seed_corpus: Path | None = Field(None, description="annotated notes every retraining job adds")
    dev_corpus: Path | None = Field(None, description="fixed development notes for the promotion gate")
    seed_fetch: bool = Field(
        True,
        description="with no seed corpus, fetch the public MTSamples notes for a first model (cached "
        "under model_dir/corpora); without internet the generated synthetic corpus is the seed",
    )
    corpus_api: str = Field(
        "https://api.github.com/repos/BIDS-Xu-Lab/Kiwi-LLaMA",
        description="GitHub contents API of the public Kiwi repository (a mirror, or a test server)",
    )

    # --- active learning -------------------------------------------------------------------------
    # bench/bench_active_learning.py with the encoder learner (3 seeds, bench/README.md): no per-note
    # strategy saves tokens against random (all within 1-3%); least confidence is the one that needs
    # fewer edits than random to reach 95% of the full-pool score (8,003 against 8,354).
    al_strategy: str = Field(
        "least_confidence",
        description="active-learning score behind Label Studio's task order and INCEpTION's suggestion "
        f"scores: {', '.join(PER_NOTE)} (recommender/active/strategies.py; kiwi simulate compares them)",
    )

    # --- retraining ------------------------------------------------------------------------------
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in model_dir")
    retrain: bool = Field(True, description="run the background retraining worker")
    retrain_every: int = Field(10, gt=0, description="new corrected documents that trigger a job")
    retrain_debounce_seconds: float = Field(30.0, ge=0, description="wait for more corrections first")
    promotion_margin: float = Field(0.0, ge=0, description="candidate may be this much worse (F1)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of corrections held out")
    role: Literal["all", "api", "trainer"] = Field(
        "all",
        description="all: serve and train (one process); api: serve, queue jobs for trainers "
        "(PostgreSQL); trainer: run the queued jobs (PostgreSQL)",
    )
    job_heartbeat_seconds: float = Field(5.0, gt=0, description="trainer heartbeat (PostgreSQL jobs)")
    job_stalled_seconds: float = Field(
        60.0, gt=0, description="a job whose trainer sent no heartbeat this long is run again elsewhere"
    )
    registry_poll_seconds: float = Field(
        2.0, gt=0, description="how often a replica looks for a promotion or rollback made elsewhere"
    )

    # --- what the corrections say (suggestion log) -------------------------------------------------
    suggestion_log: bool = Field(
        True,
        description="record what each model suggested per note (offsets, labels, scores and a text hash, "
        "never text) and score every correction against it (status page, `kiwi agreement`)",
    )
    suggestion_retention_days: float = Field(
        180.0, gt=0, description="logged suggestions older than this are deleted (their scores are kept)"
    )
    gate_recent_notes: int = Field(
        0,
        ge=0,
        description="promotion gate: with N > 0, a candidate must not score lower (exact F1, all spans, "
        "minus promotion_margin) on the N most recently corrected held-out notes than the promoted model's "
        "own suggestions for them did; 0: not checked",
    )
    retrain_agreement: Literal["all", "majority", "drop_disputed", "weighted"] = Field(
        "all",
        description="notes corrected by several annotators, in the retraining data: all (every "
        "annotator's version), majority (one version: spans most annotators agree on), drop_disputed "
        "(each version without the spans the others disagree on), weighted (each version weighted by "
        "its annotator's agreement with the others)",
    )

    # --- INCEpTION -------------------------------------------------------------------------------
    recommenders: dict[str, RecommenderConfig] = Field(default_factory=_default_recommenders)

    # --- auth ------------------------------------------------------------------------------------
    auth_token: SecretStr | None = Field(None, description="require 'Authorization: Bearer <token>'")
    basic_auth_user: str | None = Field(None, description="require HTTP basic auth (Label Studio)")
    basic_auth_password: SecretStr | None = None

    # --- Label Studio ----------------------------------------------------------------------------
    label_studio_url: str | None = Field(None, description="Label Studio base URL for callbacks")
    label_studio_token: SecretStr | None = Field(None, description="Label Studio PAT or legacy token")
    label_studio_pin_model_version: bool = Field(
        True, description="PATCH the project's model_version to the newest predictions (uncertainty sampling)"
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.model_dir / 'corrections.sqlite3'}"
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            raise ValueError("basic auth needs both KIWI_BASIC_AUTH_USER and KIWI_BASIC_AUTH_PASSWORD")
        if self.auth_token is not None and len(self.auth_token.get_secret_value()) < 16:
            raise ValueError("KIWI_AUTH_TOKEN must be at least 16 characters")
        if (self.label_studio_url is None) != (self.label_studio_token is None):
            raise ValueError("Label Studio callbacks need KIWI_LABEL_STUDIO_URL and KIWI_LABEL_STUDIO_TOKEN")
        if self.label_studio_url is not None:
            self.label_studio_url = self.label_studio_url.rstrip("/")
        for name in self.serve_models:
            if name == DEFAULT_MODEL or not MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"served model name [{name}] must be lower-case letters, digits, - or _ (at most 40) "
                    f"and not [{DEFAULT_MODEL}]"
                )
        if self.al_strategy not in PER_NOTE:
            raise ValueError(
                f"KIWI_AL_STRATEGY [{self.al_strategy}] must score single notes: one of "
                f"{', '.join(PER_NOTE)} (random, diversity and qbc choose batches, see kiwi simulate)"
            )
        if self.fallback_model != DEFAULT_MODEL and self.fallback_model not in self.serve_models:
            raise ValueError(f"fallback model [{self.fallback_model}] is not a served model")
        if self.llama_engine == "openai" and self.llama_engine_url is None:
            raise ValueError("KIWI_LLAMA_ENGINE=openai needs KIWI_LLAMA_ENGINE_URL")
        return self

    def extractor_overrides(self) -> dict[str, dict[str, object]]:
        """Config values that replace a served model's own, by extractor family."""
        values = {
            "engine": self.llama_engine,
            "engine_url": self.llama_engine_url,
            "engine_model": self.llama_engine_model,
            "engine_structured_outputs": self.llama_engine_structured_outputs,
            "engine_timeout_s": self.llama_engine_timeout_s,
            "engine_concurrency": self.llama_engine_concurrency,
        }
        llama: dict[str, object] = {k: v for k, v in values.items() if v is not None}
        return {"kiwi.llama.v1": llama} if llama else {}

    @property
    def auth_enabled(self) -> bool:
        return self.auth_token is not None or self.basic_auth_user is not None

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def unsafe_reasons(self) -> list[str]:
        """What an operator should know before exposing the service (logged at start)."""
        reasons = []
        if not self.loopback and not self.auth_enabled:
            reasons.append(
                f"binding [{self.host}] without KIWI_AUTH_TOKEN or basic auth: anyone on the network "
                "can read predictions and send training data"
            )
        if self.log_note_text:
            reasons.append("KIWI_LOG_NOTE_TEXT is on: clinical note text may reach the logs")
        return reasons


def _validated(cls: type[S], overrides: dict[str, object]) -> S:
    try:
        return cls(**overrides)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid settings [{problems}]") from None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit values; bad values become one ConfigError."""
    return _validated(Settings, overrides)


def load_process_settings(**overrides: object) -> ProcessSettings:
    """The process policy alone (``recommender/cores.py``), as ``load_settings`` reads it."""
    return _validated(ProcessSettings, overrides)
