"""The bodies of GET /health and GET /ready."""

from typing import Literal

from pydantic import BaseModel, Field


class RuntimeInfo(BaseModel):
    """Where the models run: reported by /health and /ready."""

    device: str | None = Field(
        description="torch device serving requests (cpu, cuda:0); null until start-up has "
        "chosen it from `device_setting`",
        examples=["cpu"],
    )
    device_setting: Literal["auto", "cpu", "cuda"] = Field(
        description="DEEPLENSE_DEVICE: auto (CUDA when available), cpu or cuda",
        examples=["auto"],
    )
    torch_version: str = Field(description="the installed torch", examples=["2.13.0+cpu"])
    torch_cuda: str | None = Field(
        description="CUDA version the installed torch was built for; null for a CPU-only build",
        examples=[None],
    )
    cuda_available: bool = Field(description="torch sees a usable CUDA GPU", examples=[False])


class Health(RuntimeInfo):
    """Liveness: the process answers."""

    status: Literal["ok"] = Field(default="ok", description="always ok", examples=["ok"])
    state: Literal["starting", "ready", "failed"] = Field(
        description="start-up: starting while the models load and warm up (in the background, "
        "the server answers meanwhile), ready once done, failed after a start-up error or "
        "overrun (the service then exits; /ready's detail says why)",
        examples=["ready"],
    )


class Readiness(RuntimeInfo):
    """Readiness: every configured model loaded and warmed up, and room for more work."""

    ready: bool = Field(description="true once every configured model is ready (then 200)")
    detail: str = Field(
        description="the state in words: what start-up is loading, why it failed, or why the "
        "service is saturated",
        examples=["all 4 models ready"],
    )
    models: dict[str, str] = Field(
        description="state of each configured checkpoint: pending, loading, warming, ready",
        examples=[{"aae": "ready", "vae": "ready"}],
    )
    not_ready: list[str] = Field(description="the configured models that are not ready")
    saturated: bool = Field(
        default=False,
        description="true while the admitted work or the request bodies in flight are at "
        "their bound (admission_budget_s, max_inflight_bytes): then 503 although every "
        "model is ready",
    )
