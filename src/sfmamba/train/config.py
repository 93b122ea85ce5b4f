"""The training recipe as one dataclass: defaults here, a YAML file over them, the command line over both."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

AMP_DTYPES = ("bfloat16", "float16")


@dataclass
class TrainConfig:
    """Every training setting; the field names are timm's train.py flag names with '-' -> '_'."""

    # data
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    img_size: int | None = None  # None: the model's default input size
    workers: int = 2
    data_on_device: bool = False  # fashion_mnist only: both splits on the device, batches augmented there
    # model
    model: str = "sf_mamba_nano"
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    drop: float = 0.0
    drop_path: float | None = None  # None: the model's default
    grad_checkpointing: bool = False
    channels_last: bool = False
    ddp_bb: bool = True  # DDP broadcasts rank 0's buffers (BatchNorm statistics) before every forward (timm's default)
    torchcompile: str | None = None  # a torch.compile backend, e.g. 'inductor'
    torchcompile_mode: str | None = None
    cuda_graph: bool = False  # forward and backward replayed from CUDA graphs (no compile/checkpointing; under torchrun
    # the gradients are all-reduced after the graphed backward instead of by DDP's hooks)
    # optimizer and schedule
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    epochs: int = 10
    max_steps: int | None = None  # total optimizer steps; the schedule spans them (overrides epochs)
    sched: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    # augmentation and regularisation (timm's components)
    scale: list[float] | None = None
    ratio: list[float] | None = None
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.0
    aa: str | None = None
    reprob: float = 0.0
    remode: str = "pixel"
    interpolation: str = "bilinear"
    no_aug: bool = False
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    # precision and device
    amp: bool = False
    amp_dtype: str = "bfloat16"
    device: str | None = None  # None: cuda if available, else cpu
    # run control
    batch_size: int = 128
    validation_batch_size: int | None = None
    seed: int = 42
    output: str | None = None  # the run folder; None: output/train/<model>-<time> (or the resumed run's folder)
    resume: str | None = None
    checkpoint_interval: int = 1000  # steps between `last` checkpoints (also written at every epoch end)
    time_limit: float | None = None  # seconds; stop cleanly (checkpoint + evaluation) when exceeded
    time_schedule: bool = False  # the LR schedule follows the elapsed share of time_limit too (not resume-exact)
    stop_step: int | None = None  # stop cleanly after this step, leaving the schedule as is (a planned pause)
    log_interval: int = 50
    eval_interval: int = 1  # epochs between evaluations (0: only when training ends)
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ("batch_size", "epochs", "checkpoint_interval", "log_interval")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("max_steps", "stop_step", "img_size", "validation_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(self.eval_interval, int) or self.eval_interval < 0:
            raise ValueError(f"eval_interval must be a non-negative int, got {self.eval_interval!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a non-negative int, got {self.workers!r}")
        if self.data_on_device and self.dataset != "fashion_mnist":
            raise ValueError(f"data_on_device supports only dataset 'fashion_mnist', got dataset {self.dataset!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit must be positive seconds or None, got {self.time_limit!r}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"batch_size must be even with mixup/cutmix (timm's Mixup), got {self.batch_size}")
        if self.cuda_graph and (self.torchcompile or self.grad_checkpointing):
            raise ValueError("cuda_graph cannot be combined with torchcompile or grad_checkpointing")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def load_yaml_config(path: str | Path) -> dict[str, object]:
    """The settings in a YAML file (keys may use '-' or '_'); unknown keys raise ValueError naming file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping of setting: value, got {type(data).__name__}")
    settings = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(settings) - set(FIELD_NAMES) - {"config"})
    if unknown:
        raise ValueError(f"config {path}: unknown settings {', '.join(unknown)}")
    settings.pop("config", None)
    return {name: _coerce(path, name, value) for name, value in settings.items()}


def apply_overrides(settings: dict[str, object], items: Sequence[str]) -> dict[str, object]:
    """`KEY=VALUE` strings over `settings` (a copy): values read as Python literals where they parse, else strings;
    for scripts that run many `sfmamba train` recipes (`--set lr=1e-3 model_kwargs={'dim':64}`)."""
    merged = dict(settings)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override must be KEY=VALUE, got {item!r}")
        try:
            merged[key.replace("-", "_")] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            merged[key.replace("-", "_")] = text
    return merged


def _coerce(path: Path, name: str, value: object) -> object:
    # YAML 1.1 reads '1e-3' as a string: numbers for float settings are converted, anything else is left to validate()
    annotation = _ANNOTATIONS[name]
    if value is None or not isinstance(value, str) or "float" not in annotation or "list" in annotation:
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"config {path}: {name} must be a number, got {value!r}") from None


_ANNOTATIONS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


# what a resumed run may set otherwise than its args.yaml: where it continues and how it runs and reports, not what it
# computes (every other setting must match: a resume continues the same recipe)
RESUME_MAY_CHANGE = frozenset({"resume", "output", "data_dir", "workers", "device", "time_limit", "stop_step",
                               "checkpoint_interval", "log_interval", "eval_interval", "validation_batch_size",
                               "progress"})  # fmt: skip
NOT_INHERITED = ("resume", "output", "stop_step")  # a resume from the command line takes these from it alone


def resume_differences(config: TrainConfig, saved: dict[str, object]) -> list[str]:
    """'name saved -> now' for each setting outside RESUME_MAY_CHANGE where `config` differs from a run's saved
    settings (its args.yaml, read by `load_yaml_config`)."""
    now = dataclasses.asdict(config)
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in FIELD_NAMES
            if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]  # fmt: skip


def inherited_settings(saved: dict[str, object]) -> dict[str, object]:
    """A run's saved settings to continue it from the command line (without the ones each call gives anew)."""
    return {k: v for k, v in saved.items() if k not in NOT_INHERITED}


def merge_config(yaml_settings: dict[str, object], command_line: dict[str, object]) -> TrainConfig:
    """Dataclass defaults < YAML settings < command-line settings (only those given on the command line)."""
    return TrainConfig(**{**yaml_settings, **command_line})


def config_to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
