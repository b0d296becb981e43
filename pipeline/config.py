"""The run config: one TOML file validated by pydantic, resolved once (CLI > file > defaults)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from edgeport import targets
from edgeport.errors import ConfigError, did_you_mean
from edgeport.validation import explain, read_toml
from edgeport.pipeline.compress.configs import CompressConfig
from edgeport.metrics import BUDGET_KEYS, Budget
from edgeport.types import TENSOR_DTYPES, Precision, TensorSpec

PRECISIONS = get_args(Precision)
INPUT_DTYPES = TENSOR_DTYPES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preprocessing(Strict):
    """How an app turns a raw image into the model's input; recorded in every bundle's manifest."""

    resize: list[int] | None = Field(None, description="[height, width] to resize to first")
    center_crop: list[int] | None = Field(None, description="[height, width] cut from the centre after resizing")
    scale: float = Field(1.0, description="multiplies raw 8-bit pixel values (1/255 gives [0, 1])")
    mean: list[float] | None = None
    std: list[float] | None = None
    channel_order: Literal["RGB", "BGR", "gray"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"


class ModelConfig(Strict):
    source: str = Field(description="pkg.module:factory, path/to/file.py:factory, model.pt (TorchScript) or model.pt2")
    weights: str | None = Field(None, description="a state_dict file loaded into the factory's model")
    trust_model: bool = Field(False, description="allow loading a fully pickled model (can run arbitrary code)")
    inputs: list[TensorSpec]
    output_names: list[str] = Field(default_factory=list)
    class_scores: list[str] | None = Field(
        None, description="outputs that hold class scores (argmax = the class): they get top-1 agreement and "
                          "accuracy. Default: the first output, when it is [batch, classes] and the data has labels "
                          "or the model a labels file")
    state: dict[str, str] = Field(default_factory=dict, description="recurrent state: input name = the output fed "
                                  "back into it at the next step (bundle examples loop over frames)")
    labels: str | None = Field(None, description="a text file, one class name per line")
    name: str | None = Field(None, description="model name for bundles (default: the run name)")
    version: str = "1"
    preprocessing: Preprocessing | None = None

    @model_validator(mode="after")
    def names_exist(self) -> ModelConfig:
        inputs = [s.name for s in self.inputs]
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"input names must differ: {inputs}")
        if len(set(self.output_names)) != len(self.output_names):
            raise ValueError(f"output names must differ: {self.output_names}")
        for name in self.class_scores or []:
            if self.output_names and name not in self.output_names:
                raise ValueError(f"class_scores names {name!r}, which is not an output{did_you_mean(name, self.output_names)}")
        for given, fed in self.state.items():
            if given not in inputs:
                raise ValueError(f"state: {given!r} is not an input{did_you_mean(given, inputs)}")
            if self.output_names and fed not in self.output_names:
                raise ValueError(f"state: {fed!r} is not an output{did_you_mean(fed, self.output_names)}")
        return self

    @field_validator("inputs")
    @classmethod
    def one_dynamic_dim_at_most(cls, specs: list[TensorSpec]) -> list[TensorSpec]:
        if not specs:
            raise ValueError("give at least one input")
        for spec in specs:
            dynamic = [d for d in spec.shape if isinstance(d, str)]
            if len(dynamic) > 1 or (dynamic and not isinstance(spec.shape[0], str)):
                raise ValueError(f"input {spec.name}: only the first (batch) dimension may be dynamic")
            if not spec.shape or any(isinstance(d, int) and d < 1 for d in spec.shape):
                raise ValueError(f"input {spec.name}: shape {spec.shape} needs at least one dimension, each a size "
                                 "of at least 1 or a name (\"batch\")")
            if spec.dtype not in INPUT_DTYPES:
                raise ValueError(f"input {spec.name}: dtype {spec.dtype!r} is not one of {', '.join(INPUT_DTYPES)}"
                                 f"{did_you_mean(spec.dtype, INPUT_DTYPES)}")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must differ (got {', '.join(names)})")
        return specs


class DataConfig(Strict):
    source: Literal["digits", "npy", "images", "callable", "random"] = "digits"
    path: str | None = Field(None, description=".npy/.npz file (npy) or a folder of images (images)")
    eval_path: str | None = Field(None, description="a separate evaluation source of the same kind")
    function: str | None = Field(None, description="pkg.module:function yielding input dicts (callable)")
    eval_function: str | None = Field(None, description="a separate evaluation callable (callable)")
    preprocessing: Preprocessing | None = Field(None, description="for images (default: model.preprocessing)")
    calibration_samples: int = Field(256, gt=0)
    eval_samples: int = Field(0, ge=0, description="0 = every held-out sample")
    seed: int = 0


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


Tolerance = Budget  # [verify.tolerances.PRECISION]: the limits verification holds an artifact to


DEFAULT_TOLERANCES = {
    "fp32": Budget(min_cosine=0.9999, max_abs=1e-3),
    "fp16": Budget(min_cosine=0.999),
    "int8": Budget(min_cosine=0.99, max_accuracy_drop=1.0),
}


class VerifyConfig(Strict):
    batch: int = Field(64, gt=0)
    tolerances: dict[str, Budget] = Field(default_factory=dict, description="[verify.tolerances.PRECISION]")
    against: Literal["auto", "original", "compressed"] = Field("auto", description=(
        "which PyTorch model artifacts are compared with: the [[compress]] steps' output, or the original "
        "(auto: the original when a step only prepares for int8, such as qat or adaround)"))

    @field_validator("tolerances")
    @classmethod
    def known_precisions(cls, tolerances: dict[str, Budget]) -> dict[str, Budget]:
        for precision in tolerances:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}{did_you_mean(precision, PRECISIONS)}; "
                                 f"[verify.tolerances.X] takes {', '.join(PRECISIONS)}")
        return tolerances

    def tolerance(self, precision: str) -> Budget:
        default = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["int8"])
        given = self.tolerances.get(precision)
        return default if given is None else default.updated(given)


class BenchDevice(Strict):
    name: str = Field(description="a device profile: built-in, or in [devices] dir")
    threads: int | None = Field(None, ge=0, description="overrides [bench] threads and the profile's threads")
    verify: bool = Field(True, description="also run held-out samples on the device and compare with PyTorch")


class DevicesConfig(Strict):
    dir: str | None = Field(None, description="a folder of device profiles (*.toml)")


class BenchConfig(Strict):
    iterations: int = Field(100, gt=0, description="at least this many timed runs")
    min_seconds: float = Field(2.0, ge=0, description="and at least this long")
    warmup: int = Field(10, ge=0)
    processes: int = Field(1, ge=1, le=15, description=(
        "time each artifact in this many fresh processes and report the median one: on a virtual machine one "
        "process can run 1.5x slower or faster than the next for its whole life; 3 gives figures a re-run reproduces"))
    threads: int | None = Field(None, ge=0, description="inference threads on every device (0 = all its cores); "
                                "default: each device profile's (local: every core). A [[bench.devices]] entry's "
                                "threads win over this, and --threads over both files")
    baseline: bool = Field(True, description="also time PyTorch eager fp32 with the same harness")
    devices: list[BenchDevice] = Field(default_factory=list, description="[[bench.devices]]; none = this machine")
    device_verify_samples: int = Field(100, ge=0, description="held-out samples run on each non-local device")


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# Built-in compression recipes for [search] (each step with its defaults); "none" adds nothing.
BUILTIN_RECIPES: dict[str, list[dict]] = {
    "none": [],
    # AdaRound before bias correction: the bias then absorbs what rounding left, not the reverse.
    "ptq-plus": [{"method": "equalize"}, {"method": "adaround"}, {"method": "bias-correction"}],
    "qat": [{"method": "qat"}],
}
COMPRESS_STEP = TypeAdapter(CompressConfig)


class SearchConfig(Strict):
    """`edgeport tune`: the fastest (or smallest) artifact that meets an accuracy budget."""

    targets: list[str] | None = Field(None, description="default: every [targets] entry")
    precisions: list[Literal["fp32", "fp16", "int8-dynamic", "int8", "full-int8"]] | None = Field(
        None, description="default: each target's configured precisions")
    calibration_methods: list[CalibrationMethod] = Field(
        ["minmax"], description="int8 calibration methods to try (ONNX Runtime: calibrate method; OpenVINO: the NNCF "
                                "range estimator minmax, histogram for entropy, mean_quantile for percentile)")
    accuracy_aware: list[bool] = Field([False, True], description="try int8 with the most sensitive layers in float")
    max_float_layers: int = Field(16, ge=1, description="accuracy-aware: at most this many layers kept in float")
    accuracy_aware_from: Literal["closest", "every"] = Field("closest", description=(
        "accuracy-aware: start from the plain int8 closest to the budget per target (closest), or from every "
        "calibration method's (every: the same fallback several times over, minutes each on a real CNN)"))
    min_top1_agreement: float | None = Field(None, gt=0, le=1, description="budget: share of held-out samples whose "
                                             "top class matches PyTorch fp32's")
    min_confident_top1_agreement: float | None = Field(None, gt=0, le=1, description=(
        "budget: top-1 agreement on the held-out samples PyTorch gives its top class a probability >= 0.5 "
        "(the predictions an app acts on); the plain agreement is reported beside it"))
    max_accuracy_drop: float | None = Field(None, ge=0, description="budget: points of held-out accuracy below PyTorch")
    min_cosine: float | None = Field(None, gt=0, le=1, description="budget: output cosine with PyTorch on held-out data")
    objective: Literal["latency", "size"] = Field("latency", description="minimise p50 on `device`, or file size")
    device: str = Field("local", description="the device whose p50 is the objective")
    executor: Literal["local", "ray"] = Field("local", description="local: a process pool; ray: a Ray cluster")
    workers: int = Field(0, ge=0, description="local: processes (0 = every core)")
    ray_address: str = Field("local", description='"local" starts Ray here; "auto" or "ray://host:port" joins a cluster')
    recipes: list[str] = Field(["none"], min_length=1, description=(
        "compression recipes to try, each appended to the run's [[compress]] steps: none, ptq-plus (equalize, "
        "adaptive rounding, bias correction), qat, or a name defined under [search.recipe]"))
    recipe: dict[str, list[CompressConfig]] = Field(default_factory=dict, description=(
        "recipes of your own: [[search.recipe.NAME]] tables, each a [[compress]] step"))

    @model_validator(mode="after")
    def has_budget(self) -> SearchConfig:
        if all(getattr(self, k) is None for k in BUDGET_KEYS):
            raise ValueError(f"a budget is needed: {', '.join(BUDGET_KEYS[:-1])} or {BUDGET_KEYS[-1]}")
        for name in self.recipe:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"recipe name {name!r}: letters, digits, '.', '_' and '-' only (it names a folder)")
        known = [*BUILTIN_RECIPES, *self.recipe]
        for name in self.recipes:
            if name not in known:
                raise ValueError(f"unknown recipe {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
        if len(set(self.recipes)) < len(self.recipes):
            raise ValueError("recipes: a name is listed twice")
        return self

    def prepares_int8(self, name: str) -> bool:
        """Whether a recipe only prepares the model for int8 (its float model is no candidate)."""
        return any(step.int8_preparation for step in self.recipe_steps(name))

    def recipe_steps(self, name: str) -> list:
        """The [[compress]] steps a recipe appends."""
        if name in self.recipe:
            return list(self.recipe[name])
        return [COMPRESS_STEP.validate_python(step) for step in BUILTIN_RECIPES[name]]

    @property
    def budget(self) -> Budget:
        return Budget(**{k: getattr(self, k) for k in BUDGET_KEYS})


class PackageConfig(Strict):
    enabled: bool = Field(True, description="write a bundle per target after the run")
    precisions: list[str] | None = Field(None, description="bundle these precisions (default: the fastest verified)")


class RunConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    runs_dir: str = "runs"
    model: ModelConfig
    data: DataConfig = DataConfig()
    compress: list[CompressConfig] = Field(default_factory=list, description="[[compress]] steps, in order")
    targets: dict[str, dict] = Field(default_factory=lambda: {targets.DEFAULT: {}})
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()
    devices: DevicesConfig = DevicesConfig()
    search: SearchConfig | None = Field(None, description="[search] for `edgeport tune`")
    package: PackageConfig = PackageConfig()

    # Where relative paths in the file are resolved from (the config file's folder).
    base_dir: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def known_targets(self) -> RunConfig:
        for name in self.targets:
            known = targets.available()
            if name not in known:
                raise ValueError(f"unknown target {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
        return self

    def target_options(self, name: str):
        """`[targets.NAME]` validated by the target's own options model."""
        schema = targets.options_model(name)
        return schema.model_validate(self.targets.get(name, {}))

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def parse(data: dict, where: str, base_dir: Path) -> RunConfig:
    """Validate a config mapping; every problem becomes a ConfigError naming `where`."""
    try:
        config = RunConfig.model_validate({**data, "base_dir": base_dir})
        for name in config.targets:
            try:
                config.target_options(name)
            except ValidationError as e:
                raise explain(e, f"{where} [targets.{name}]", targets.options_model(name)) from None
        return config
    except ValidationError as e:
        raise explain(e, where, RunConfig) from None


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML config; `overrides` (dotted keys from the CLI) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = read_toml(path)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    return parse(data, str(path), path.parent.resolve())


def to_toml(config: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
