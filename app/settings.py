"""Service settings: every default in one class, each overridable by a `DEEPLENSE_*` variable.

Lists (``cors_origins``) are read from the environment as JSON, e.g.
``DEEPLENSE_CORS_ORIGINS='["https://example.org"]'``.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from deeplense.errors import DeepLenseError

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of the scoring service (env prefix ``DEEPLENSE_``)."""

    model_config = SettingsConfigDict(env_prefix="DEEPLENSE_", extra="ignore")

    # Where the checkpoints live: every sub-folder holding a config.json is loaded at start-up,
    # named after its folder (aae, vae, dcae, rbm, lensfit, lensfit2). By default the shipped
    # Model R set, the one for real images: its LensFit 2 fits any smooth lens with the
    # image's own PSF, pixel scale and noise, and keeps its calibrated false-positive rate on
    # realistic lenses, where Model A's LensFit flags every normal lens (README, "Which set to
    # serve"). checkpoints/model_a serves the study's Model A physics (the examples).
    checkpoint_dir: Path = REPO_ROOT / "checkpoints" / "model_r"
    # Model used when a request names none. None = models.selection.choose_default_model: the
    # best detection rate at the calibrated threshold (else the best ROC-AUC) of each model's
    # default score on its labelled validation split (recorded in its card, never the test
    # split), ties in the study's order; a name that is not loaded (or "ensemble" without two
    # calibrated models) fails at start-up.
    default_model: str | None = None
    # auto = CUDA when available, else CPU. "cuda" without a GPU fails at start-up.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for torch on CPU, per forward pass. One: on the 2-core machine, loaded
    # by other work, torch's default (one per core) swung LensFit's single-image latency from
    # 0.7 to 8 s and start-up from 10 to 49 s, where one thread held 0.25-0.4 s and 5-11 s
    # (README, Configuration). More replicas, not more threads, use more cores.
    torch_threads: int = Field(default=1, ge=1)
    # Seconds start-up may take to load and warm up every model (in the background: /health
    # and /ready answer meanwhile). Past it, one log line says what start-up was doing and the
    # service exits non-zero, as on a bad checkpoint, so a restart policy or an alert acts.
    # The shipped Model A set loads in 2.5 s on the shared 2-core CPU (torch_threads=1), 49 s
    # at worst with too many threads (README, Configuration): 120 s leaves room for slow disks.
    startup_timeout_s: float = Field(default=120.0, gt=0)
    # Images per forward pass; a request with more readable files runs several passes.
    batch_size: int = Field(default=64, ge=1)

    # Upload limits. Bytes are counted while the body streams in (Content-Length is checked
    # first, never trusted alone); over a byte or file limit the answer is 413 naming the limit.
    max_file_bytes: int = Field(default=20 * MB, ge=1)
    max_request_bytes: int = Field(default=100 * MB, ge=1)
    max_files: int = Field(default=64, ge=1)
    # Pixels per image (height x width), read from the file header before decoding.
    max_pixels: int = Field(default=4096 * 4096, ge=1)
    # Whole-request deadline in seconds (upload, decoding and inference); over it -> 504.
    request_timeout_s: float = Field(default=60.0, gt=0)
    # Admission by cost. A request costs its files x its model's measured seconds per image
    # (an ensemble: its members' sum; a tiny image is upscaled and costs a full one). Requests
    # are admitted while the admitted work stays within admission_budget_s seconds; one that
    # finds no room within admission_wait_s gets a prompt 503 with Retry-After (the estimated
    # seconds until room), never a 504 after queueing. A request whose cost alone is over the
    # budget gets 413 at once, naming how many files fit (it could never run beside others).
    admission_budget_s: float = Field(default=20.0, gt=0)
    admission_wait_s: float = Field(default=0.5, ge=0)
    # With an API key set: the admitted work of one client (its address) above this -> 429.
    client_budget_s: float = Field(default=10.0, gt=0)
    # Request bodies in flight at once (the announced Content-Length, else max_request_bytes):
    # a request that finds no room gets 503 before its body is read, so waiting uploads never
    # hold memory without bound. A request over the cap runs alone.
    max_inflight_bytes: int = Field(default=256 * MB, ge=1)
    # Images narrower or shorter than this (pixels) carry too little to score: a file error.
    min_image_side: int = Field(default=16, ge=1)
    # Decoding runs in this many worker processes (at most this many files decode at once);
    # a worker past a file's decode_timeout_s or its request's deadline is killed and
    # replaced, and the file gets an error. Each worker's address space is capped at
    # decode_memory_bytes (None = no cap).
    decode_workers: int = Field(default=2, ge=1)
    decode_timeout_s: float = Field(default=10.0, gt=0)
    decode_memory_bytes: int | None = Field(default=4 << 30, ge=256 * MB)

    # Browser origins allowed to call the API (CORS); empty = same-origin only.
    cors_origins: list[str] = Field(default_factory=list)
    # Shared secret for the X-API-Key header; None = no key needed. /health, /ready,
    # /metrics, /docs and the upload page stay open either way.
    api_key: SecretStr | None = None
    # Keys by client name, JSON ('{"survey-a": "...", "survey-b": "..."}'): each also opens
    # the service, and its requests count as that client for client_budget_s wherever they
    # come from (the shared api_key's requests count by address).
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Python logging level of the service's loggers.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class SettingsError(DeepLenseError):
    """A `DEEPLENSE_*` variable holds a value the settings refuse; one line names each."""


def describe_invalid(exc: ValidationError) -> str:
    """One line: each invalid variable, its value (cut short) and what pydantic expected."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        value = repr(error.get("input"))
        value = value if len(value) <= 40 else value[:37] + "..."
        problems.append(
            f"{Settings.model_config['env_prefix']}{field.upper()}={value}: {error['msg']}"
        )
    return "invalid settings: " + "; ".join(problems)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (tests pass their own);
    SettingsError (one line) when a variable is invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_invalid(exc)) from None
    except PydanticSettingsError as exc:  # a list or dict variable that is not JSON
        raise SettingsError(
            f"invalid settings: {exc}; lists are JSON, e.g. "
            f"{Settings.model_config['env_prefix']}CORS_ORIGINS='[\"https://example.org\"]'"
        ) from None
