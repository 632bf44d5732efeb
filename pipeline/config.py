"""The one configuration schema, loader and validator.

Three entry points read the same tree: ``dvc exp run`` composes ``params.yaml`` from ``conf/`` (and validates it
there, through ``hydra_plugins/odeval_dvc_errors``, before writing it), DVC stages load ``params.yaml``, and the
Hydra app composes ``conf/`` itself. All end in :func:`to_config` / :func:`validate`, so a bad value gets the
same message whichever way the user came in.

The YAML files do not name the schema in their defaults lists on purpose: a ConfigStore reference would make
composing ``conf/`` depend on this package being imported first (DVC imports it only through that plugin).
The schema is registered in Hydra's ConfigStore (``odeval_schema``) for tools and applied by :func:`to_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.secrets import has_secret_value, is_secret_key

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# simple_app's KV ring (MobileQuant capp/src/llm.cpp): positions wrap modulo seq_len - 1 = 1023, so one process
# holds at most 1023 positions; the reference app wraps at the same place (and clears its cache instead).
APP_KV_POSITIONS = 1023
# model.variant of source=package (pipeline.models.gguf_model.VARIANTS; a test keeps the two equal — config stays
# free of the converter's numpy import)
MODEL_VARIANTS = ("gguf", "gguf-a8", "fp16", "w8", "w4", "w3")


class ConfigError(ValueError):
    """Invalid configuration: one line per problem, each naming the key, the value and the fix."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = "builtin"  # hub | builtin | local | package
    repo_id: str | None = None
    revision: str | None = None
    allow_patterns: list[str] | None = None
    path: str | None = None
    # source=package: a file inside an installed PyPI distribution (pipeline/fetch/package_source.py), pinned by the
    # distribution's version and the file's sha256, converted to a model dir (pipeline/models/gguf_model.py)
    package: str | None = None
    package_version: str | None = None
    package_file: str | None = None
    sha256: str | None = None
    variant: str | None = None  # gguf (as shipped) | gguf-a8 (+ 8-bit activations) | fp16 | w8 | w4 | w3
    format: str = "hf"  # hf | mobilequant-qnn
    quant: str = "fp32"
    max_seq_len: int = 1024
    chip: str = "any"
    weight_bytes: int | None = None
    # files the model dir must hold (checked before the first prompt); None: derived from the format (hf:
    # config.json + weights + tokenizer; see pipeline/run/preflight.py)
    required_files: list[str] | None = None


@dataclass
class AppConfig:
    name: str = MISSING
    source: str = "builtin"
    repo_id: str | None = None
    revision: str | None = None
    allow_patterns: list[str] | None = None
    path: str | None = None
    binary: str = "simple_app"
    device_arg: str | None = "8gen3"
    template: str = "mobilequant"  # mobilequant | hf-chat | raw (only the reference app can change it)
    template_tokens: int = 15
    past_end_token: int | str | None = None  # reference app: simple_app's read past the prompt — null | id | faithful
    past_end_unwritten_id: int = 0  # faithful: the id fed when that slot was never written (see conf/app)
    threads: int | None = None  # reference app: CPU threads of its engine; None: its default for the host
    virtual_only: bool = False
    env: dict[str, str] = field(default_factory=dict)
    required_files: list[str] = field(default_factory=list)  # files the app dir must hold, e.g. the QNN libs
    protocol: str = "simple_app"  # simple_app (its REPL) | llama-cpp (llama-completion, pipeline/apps/llama_cpp.py)
    bench_binary: str | None = None  # llama-cpp: llama-bench's file name in the app dir (runtime=bench)


@dataclass
class VirtualConfig:
    root: str = ".odeval/virtual"
    port: int | None = None  # None: derived from the root, so every checkout's virtual device has its own
    capacity_gb: float = 64
    simulate_thermal: bool = False
    standin_model: str | None = None
    auth: bool = False  # require ADB AUTH like a phone: only host keys listed in adb_keys get `device`
    adb_keys: str | None = None  # None: adb_keys in the daemon's state dir (host side, never writable over adb)
    sandbox: str = "on"  # on: the kernel confines the device side (refuses to start if it cannot); off: opt-out
    faults: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolDevice:
    """One phone (or virtual device) of a pool: where its adb server is, and labels jobs select it by."""

    name: str = MISSING
    kind: str = "adb"  # adb | virtual
    serial: str | None = None
    adb_host: str = "127.0.0.1"
    adb_port: int | None = None
    connect: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    virtual_root: str | None = None  # kind=virtual: its storage root and daemon port
    virtual_port: int | None = None


@dataclass
class DeviceConfig:
    name: str = MISSING
    kind: str = "virtual"  # virtual | adb | pool
    serial: str | None = None
    adb_host: str | None = None  # None (and adb_port None): the server the env names, as adb does (device/adb.py)
    adb_port: int | None = None
    connect: str | None = None
    remote_root: str = "/data/local/tmp/odeval"
    bandwidth_gb_s: float | None = None
    push_verify: str = "stat"  # stat (trust unchanged size+mtime) | full (re-hash every file on the device)
    virtual: VirtualConfig = field(default_factory=VirtualConfig)
    pool: list[PoolDevice] = field(default_factory=list)  # kind=pool: the devices jobs lease from
    require: dict[str, str] = field(default_factory=dict)  # labels a pool device must have, e.g. {chip: 8gen3}
    lease_timeout_s: float = 3600.0  # how long a job waits for a free matching device


@dataclass
class PromptsConfig:
    name: str = MISSING
    path: str | None = None
    generator: str | None = None  # length
    n: int = 0
    limit: int | None = None
    newlines: str = "reject"  # reject | join
    format: str = "odeval"  # odeval (prompts/*.jsonl lines) | ifeval (key, prompt, instruction_id_list, kwargs)
    # prompts=ifeval: a file of a pinned PyPI distribution, as model.source=package (pipeline/run/prompt_sources.py)
    package: str | None = None
    package_version: str | None = None
    package_file: str | None = None
    sha256: str | None = None
    stride: int = 1  # keep every stride-th prompt of the file (file order, from the first), before limit
    context: int | None = None  # the set's own budget and deadline (null: sequence.*, runtime.*; see budget())
    max_new_tokens: int | None = None
    prompt_timeout_s: float | None = None


@dataclass
class SequenceConfig:
    name: str = MISSING
    context: int = 160
    max_new_tokens: int = 80


@dataclass
class PromptingConfig:
    name: str = MISSING
    template: str = "{prompt}"


@dataclass
class SessionConfig:
    name: str = MISSING
    mode: str = "fresh"  # fresh | shared


@dataclass
class RuntimeConfig:
    name: str = "default"
    repeats: int = 1
    warmup: int = 0
    cooldown_s: float = 0.0
    prompt_timeout_s: float = 120.0
    load_timeout_s: float = 180.0
    max_output_bytes: int = 65536
    telemetry_interval_s: float = 1.0
    bench_pp: int = 64  # app=llama-cpp with runtime=bench: llama-bench's prompt and generation sizes
    bench_tg: int = 128


@dataclass
class JudgeConfig:
    url: str | None = None
    model: str | None = None


@dataclass
class FluencyConfig:
    model: str | None = "auto"  # auto | null | a conf/model preset or model dir (pipeline/quality/fluency.py)
    references: dict[str, str] = field(default_factory=dict)  # model-name prefix -> reference preset (auto)


@dataclass
class ScoringConfig:
    name: str = "default"
    relevance: bool = True
    embedding_model: str | None = None
    fp_reference: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    fluency: FluencyConfig = field(default_factory=FluencyConfig)
    soc_bandwidth_gb_s: dict[str, float] = field(default_factory=dict)


@dataclass
class TrackingConfig:
    name: str = "mlflow"
    backend: str = "mlflow"  # mlflow | none
    tracking_uri: str | None = "sqlite:///mlflow.db"
    experiment: str = "odeval"
    required: bool = False


@dataclass
class PathsConfig:
    name: str = "default"
    artifacts: str = "artifacts"
    metrics: str = "metrics"
    cache: str = ".odeval/cache"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    app: AppConfig = field(default_factory=AppConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    prompting: PromptingConfig = field(default_factory=PromptingConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tag: str = "default"


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (see the module docstring for why YAML does not name it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="odeval_schema", node=Config)


# ---------------------------------------------------------------- loading

def to_config(raw: DictConfig | dict, source: str = "config") -> Config:
    """Typed, validated config from a composed tree; unknown keys and wrong types become ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError([f"{key}: {msg} — fix the value in conf/ or the override"], source) from None
    validate(cfg, source)
    return cfg


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/ like DVC does (no hydra node), for params.yaml generation, checks and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg


def group_choices(cfg: Config) -> list[str]:
    """The group overrides that reproduce cfg's choices: every group file carries a `name:` key."""
    return [
        f"{g}={getattr(cfg, g).name}"
        for g in ("model", "app", "device", "prompts", "sequence", "prompting", "session", "runtime", "scoring",
                  "tracking")
    ]



def as_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


@dataclass(frozen=True)
class Budget:
    """The sequence budget and answer deadline a run uses (``keys``: the config key each value came from)."""

    context: int
    max_new_tokens: int
    prompt_timeout_s: float
    keys: tuple[str, str, str]


def budget(cfg: Config) -> Budget:
    """The prompt set's own ``prompts.context``/``max_new_tokens``/``prompt_timeout_s`` where set, else ``sequence.*``
    and ``runtime.prompt_timeout_s``. One function: validation, the run stage and the run identity must agree."""
    pr, s, rt = cfg.prompts, cfg.sequence, cfg.runtime
    ctx = (pr.context, "prompts.context") if pr.context is not None else (s.context, "sequence.context")
    new = ((pr.max_new_tokens, "prompts.max_new_tokens") if pr.max_new_tokens is not None
           else (s.max_new_tokens, "sequence.max_new_tokens"))
    tmo = ((pr.prompt_timeout_s, "prompts.prompt_timeout_s") if pr.prompt_timeout_s is not None
           else (rt.prompt_timeout_s, "runtime.prompt_timeout_s"))
    return Budget(ctx[0], new[0], tmo[0], (ctx[1], new[1], tmo[1]))


# ---------------------------------------------------------------- validation

def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r}: must be one of {', '.join(allowed)}")


def _check_source(problems: list[str], sec: str, c: ModelConfig | AppConfig) -> None:
    extra = ("package",) if sec == "model" else ("build",)  # app: build = the host build of llama.cpp
    _choice(problems, f"{sec}.source", c.source, ("hub", "builtin", "local") + extra)
    if isinstance(c, ModelConfig) and c.source == "package":
        _check_package(problems, c)
    if c.source == "hub":
        if not c.repo_id:
            problems.append(f"{sec}.repo_id=None: required when {sec}.source=hub — set the Hugging Face repo id")
        if not c.revision:
            problems.append(
                f"{sec}.revision=None: required when {sec}.source=hub — pin a commit sha"
                " (or a branch: fetch records the sha it resolves to)"
            )
    if c.source == "local" and not c.path:
        problems.append(f"{sec}.path=None: required when {sec}.source=local — set {sec}.path=/path/to/dir")


def _check_package(problems: list[str], m: ModelConfig | PromptsConfig, sec: str = "model") -> None:
    """A package file needs the distribution, its version, the file and its sha256 (pinned twice); a model a variant."""
    why = ("when model.source=package — see conf/model/smollm2-q4.yaml" if sec == "model"
           else "with prompts.package — see conf/prompts/ifeval.yaml")
    for key in ("package", "package_version", "package_file", "sha256"):
        if not getattr(m, key):
            problems.append(f"{sec}.{key}=None: required {why}")
    sha = m.sha256 or ""
    if sha and not (len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha.lower())):
        problems.append(f"{sec}.sha256={sha!r}: must be the file's 64-hex-digit sha256")
    if isinstance(m, ModelConfig):
        _choice(problems, "model.variant", m.variant, MODEL_VARIANTS)


def validate(cfg: Config, source: str = "config") -> None:
    """Cross-field checks the types cannot express; raises one ConfigError listing every problem."""
    p: list[str] = []
    m, a, d, s, rt = cfg.model, cfg.app, cfg.device, cfg.sequence, cfg.runtime
    _check_source(p, "model", m)
    _check_source(p, "app", a)
    _choice(p, "model.format", m.format, ("hf", "mobilequant-qnn"))
    _choice(p, "app.protocol", a.protocol, ("simple_app", "llama-cpp"))
    _choice(p, "device.kind", d.kind, ("virtual", "adb", "pool"))
    if d.kind == "pool" and not d.pool:
        p.append("device.pool=[]: device.kind=pool needs devices — list them in conf/device/pool.yaml")
    _choice(p, "device.push_verify", d.push_verify, ("stat", "full"))
    _choice(p, "session.mode", cfg.session.mode, ("fresh", "shared"))
    _choice(p, "app.template", a.template, ("mobilequant", "hf-chat", "raw"))
    _choice(p, "prompts.newlines", cfg.prompts.newlines, ("reject", "join"))
    _choice(p, "tracking.backend", cfg.tracking.backend, ("mlflow", "none"))
    b = budget(cfg)
    total = b.context + b.max_new_tokens + a.template_tokens
    limit = min(m.max_seq_len, APP_KV_POSITIONS)
    if total > limit:
        why = (f"model.max_seq_len={m.max_seq_len}" if m.max_seq_len <= APP_KV_POSITIONS else
               f"the {APP_KV_POSITIONS} KV positions simple_app's ring holds (model.max_seq_len={m.max_seq_len})")
        p.append(
            f"{b.keys[0]} + {b.keys[1]} + app.template_tokens = {b.context} + {b.max_new_tokens} +"
            f" {a.template_tokens} = {total} exceeds {why} — pick a smaller"
            f" sequence budget (e.g. sequence=s256) or lower {b.keys[0]} / {b.keys[1]}"
        )
    for key, val in {"sequence.context": s.context, "sequence.max_new_tokens": s.max_new_tokens,
                     b.keys[0]: b.context, b.keys[1]: b.max_new_tokens}.items():
        if val < 1:
            p.append(f"{key}={val}: must be ≥ 1")
    for sec, files in (("app", a.required_files), ("model", m.required_files or [])):
        bad = [f for f in files if not f or f.startswith("/") or ".." in f.split("/")]
        if bad:
            p.append(f"{sec}.required_files: {bad[0]!r} must be a path relative to the {sec} dir")
    if rt.repeats < 1:
        p.append(f"runtime.repeats={rt.repeats}: must be ≥ 1 (use runtime.warmup for unmeasured runs)")
    if rt.warmup < 0:
        p.append(f"runtime.warmup={rt.warmup}: must be ≥ 0")
    for key in ("prompt_timeout_s", "load_timeout_s", "telemetry_interval_s"):
        if getattr(rt, key) <= 0:
            p.append(f"runtime.{key}={getattr(rt, key)}: must be > 0")
    if rt.cooldown_s < 0:
        p.append(f"runtime.cooldown_s={rt.cooldown_s}: must be ≥ 0")
    if d.kind == "adb" and a.virtual_only:  # (a pool is checked per device when it is leased)
        p.append(
            f"app={a.name} with device.kind=adb: the {a.name} app only runs on the virtual device — use"
            " app=simple-app-8gen3 (or device=virtual)"
        )
    pe = a.past_end_token
    if isinstance(pe, str) and pe != "faithful" or isinstance(pe, bool):
        p.append(f"app.past_end_token={pe!r}: use null (the fixed app), an integer token id, or faithful (simple_app's"
                 " prompt buffer rebuilt with the model's vocabulary)")
    if a.threads is not None and (isinstance(a.threads, bool) or not isinstance(a.threads, int)
                                  or not 1 <= a.threads <= 99):
        p.append(f"app.threads={a.threads!r}: use null (the app's default for the host) or an integer 1-99")
    if a.past_end_token is not None and not a.virtual_only:
        p.append(f"app.past_end_token={a.past_end_token}: only the reference app can emulate simple_app's read past"
                 " the prompt; the real binary always does it")
    if a.protocol == "llama-cpp":
        _check_llama_cpp(p, cfg)
    elif a.template != "mobilequant" and not a.virtual_only:
        p.append(
            f"app.template={a.template!r}: {a.name}'s prompt template is compiled into the binary — only the"
            " reference app (app=reference) can change it"
        )
    if str(d.virtual.sandbox).lower() not in ("on", "off", "true", "false"):
        p.append(f"device.virtual.sandbox={d.virtual.sandbox!r}: use on (the kernel confines the virtual device) or"
                 " off (an explicit opt-out: any local user with adb could then run code as you)")
    if d.kind == "virtual" and m.format == "mobilequant-qnn" and not d.virtual.standin_model:
        p.append(
            f"model={m.name} on device=virtual: QNN models run only on a Snapdragon HTP — use device=adb, or set"
            " device.virtual.standin_model=DIR (an HF model dir the virtual device runs instead; results say so)"
        )
    tmpl = cfg.prompting.template
    if tmpl.count("{prompt}") != 1 or "\n" in tmpl:
        p.append(f"prompting.template={tmpl!r}: must contain {{prompt}} exactly once and no newline")
    pr = cfg.prompts
    if not pr.path and not pr.generator and not pr.package:
        p.append(f"prompts={pr.name}: set prompts.path=FILE.jsonl (or a generator such as prompts=length)")
    _choice(p, "prompts.format", pr.format, ("odeval", "ifeval"))
    if pr.package and not pr.path:
        _check_package(p, pr, "prompts")
    if pr.stride < 1:
        p.append(f"prompts.stride={pr.stride}: must be ≥ 1 (1 = every prompt)")
    if pr.prompt_timeout_s is not None and pr.prompt_timeout_s <= 0:
        p.append(f"prompts.prompt_timeout_s={pr.prompt_timeout_s}: must be > 0 or null (runtime.prompt_timeout_s)")
    if pr.generator not in (None, "length"):
        p.append(f"prompts.generator={pr.generator!r}: must be null or 'length'")
    if pr.limit is not None and pr.limit < 1:
        p.append(f"prompts.limit={pr.limit}: must be ≥ 1 or null")
    p += _secret_keys(as_dict(cfg))
    if p:
        raise ConfigError(p, source)


def _check_llama_cpp(p: list[str], cfg: Config) -> None:
    """llama.cpp's app: its templates, one process per prompt, the bench sizes."""
    a = cfg.app
    _choice(p, "app.template", a.template, ("hf-chat", "raw"))
    if cfg.session.mode == "shared":
        p.append("session=shared with app=llama-cpp: llama-completion prints its counters only when it exits, so a "
                 "shared conversation's per-prompt numbers cannot be read — use session=fresh")
    for key in ("bench_pp", "bench_tg"):
        if getattr(cfg.runtime, key) < 1:
            p.append(f"runtime.{key}={getattr(cfg.runtime, key)}: must be ≥ 1")
    m = cfg.model
    if m.source == "builtin" or (m.source == "package" and m.variant != "gguf"):
        p.append(f"model={m.name} with app=llama-cpp: llama.cpp runs a GGUF file and this model is "
                 f"{'built by odeval as safetensors' if m.source == 'builtin' else f'converted ({m.variant})'} — use "
                 "model=smollm2-q4 (the GGUF as shipped), or a hub/local model dir holding one .gguf")
    if a.source == "build" and cfg.device.kind == "adb":
        p.append("app=llama-cpp with app.source=build and device.kind=adb: the build is for this host (the virtual"
                 " device) — for a phone set app.source=local app.path=DIR (an Android arm64 build; README)")


def _secret_keys(d: Any, prefix: str = "") -> list[str]:
    """Secrets come from the environment (HF_TOKEN), never from config that lands in params.yaml and MLflow."""
    out: list[str] = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            # a boolean (device.virtual.auth: true) switches something on; it cannot hold a credential
            if (is_secret_key(str(k)) and v not in (None, "") and not isinstance(v, bool)) or has_secret_value(v):
                out.append(f"{key}: looks like a secret — remove it from the config and set it in the environment"
                           " (e.g. HF_TOKEN); config values are recorded in params.yaml and MLflow")
            out += _secret_keys(v, key + ".")
    return out
