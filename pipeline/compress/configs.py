"""Typed, versioned configs, one per compression method (the `method` key selects)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    # A step that only prepares the model for int8 (its float model is a vehicle, not a product):
    # artifacts are then judged against the original model, not the step's output.
    int8_preparation: ClassVar[bool] = False


class PruneStructured(Step):
    """Remove whole channels with torch-pruning (dependency-graph aware): dense runtimes get faster."""

    method: Literal["prune-structured"] = "prune-structured"
    ratio: float = Field(0.5, ge=0, lt=1, description="fraction of channels to remove")
    layer_ratios: dict[str, float] = Field(default_factory=dict, description="per-layer ratios by module name")
    global_pruning: bool = Field(False, description="rank channels across layers instead of per layer")
    importance: Literal["l1", "l2", "taylor"] = "l2"
    ignore: list[str] | None = Field(None, description="module names to keep whole (default: the output layer)")


class PruneUnstructured(Step):
    """Zero the smallest weights (torch.nn.utils.prune), made permanent. Dense runtimes gain no speed."""

    method: Literal["prune-unstructured"] = "prune-unstructured"
    ratio: float = Field(0.5, ge=0, lt=1, description="fraction of weights set to zero")
    ignore: list[str] | None = None


class LowRank(Step):
    """Replace Linear and Conv layers by two thinner ones (a rank-r product) where that saves
    parameters and MACs. Version 2 made the activation-aware algorithm the default; a config
    that says `version = 1` keeps version 1's plain SVD at 90% energy."""

    version: int = Field(2, ge=1, le=2)
    method: Literal["low-rank"] = "low-rank"
    algorithm: Literal["activation-aware", "svd"] = Field(
        "activation-aware", description="activation-aware: SVD of the weight whitened by the calibration inputs' "
        "covariance (error measured on the layer's outputs); svd: plain truncated SVD of the weight")
    max_layer_error: float | None = Field(
        None, gt=0, lt=1, description="activation-aware: the smallest rank whose relative output error "
        "||dW X||/||W X|| on calibration inputs is at most this (default 0.1 when no rule is set)")
    energy: float | None = Field(
        None, gt=0, le=1, description="the smallest rank keeping this share of energy: of the weight's singular "
        "values (svd; default 0.9) or of the layer's output on calibration inputs (activation-aware, = 1 - error^2)")
    rank_ratio: float | None = Field(None, gt=0, le=1, description="or a fixed fraction of the full rank")
    convolutions: Literal["1x1", "all"] = Field(
        "all", description="all: kxk Conv too, as a kxk conv to r channels then a 1x1 conv (channel low rank)")
    ignore: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def one_rank_rule(self):
        rules = [k for k in ("max_layer_error", "energy", "rank_ratio") if getattr(self, k) is not None]
        if len(rules) > 1:
            raise ValueError(f"set one of max_layer_error, energy, rank_ratio (got {', '.join(rules)})")
        if self.max_layer_error is not None and self.algorithm == "svd":
            raise ValueError("max_layer_error needs algorithm = \"activation-aware\" (svd has energy or rank_ratio)")
        if self.version == 1:  # version 1: plain SVD of Linear and 1x1 Conv
            self.algorithm = self.algorithm if "algorithm" in self.model_fields_set else "svd"
            self.convolutions = self.convolutions if "convolutions" in self.model_fields_set else "1x1"
        return self

    def rank_rule(self) -> tuple[str, float]:
        """("max_layer_error" | "energy" | "rank_ratio", value), defaults filled in."""
        for key in ("rank_ratio", "energy", "max_layer_error"):
            if getattr(self, key) is not None:
                return key, getattr(self, key)
        return ("energy", 0.9) if self.algorithm == "svd" else ("max_layer_error", 0.1)


class Training(BaseModel):
    """How a step trains the compressed student against the original teacher (distillation)."""

    model_config = ConfigDict(extra="forbid")
    data: Literal["digits", "npy"] | None = Field(None, description="training data source (required)")
    path: str | None = Field(None, description=".npz with input arrays (and `labels`) for data = 'npy'")
    epochs: int = Field(30, gt=0)
    lr: float = Field(2e-3, gt=0, description="peak of a one-cycle schedule")
    batch_size: int = Field(64, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (teacher) loss; the rest is task loss")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="of the training data, for picking the best epoch")
    seed: int = 0


class Distill(Training, Step):
    """Fine-tune the compressed student against the original teacher."""

    method: Literal["distill"] = "distill"


class Qat(Step):
    """Quantization-aware training: the model with simulated int8 (BN folded, per-channel symmetric
    int8 weights, per-tensor uint8 activations, ranges initialised from calibration, all learned)
    fine-tuned by distillation from the original model; needs no labels."""

    method: Literal["qat"] = "qat"
    int8_preparation: ClassVar[bool] = True
    data: Literal["calibration", "digits", "npy"] = Field(
        "calibration", description="training data: the run's calibration set, the digits train split, or an .npz")
    path: str | None = Field(None, description=".npz with input arrays for data = 'npy' (labels are not used)")
    epochs: int = Field(10, gt=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of the weights (Adam, warm-up then cosine)")
    range_lr: float = Field(1e-3, gt=0, description="peak learning rate of the log-scales of weights and activations")
    batch_size: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0, description="of the KL loss on class-score outputs")
    kl_weight: float = Field(1.0, ge=0, description="KL(teacher || student) on class-score outputs, times T^2")
    mse_weight: float = Field(1.0, ge=0, description="MSE on every output, divided by the teacher output's variance")
    feature_weight: float = Field(0.0, ge=0, description="MSE of each quantized activation against its float value")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="of the training data, for keeping the best step")
    seed: int = 0


class Equalize(Step):
    """Cross-layer equalization (Nagel et al. 2019): rescale the channels between two consecutive convs
    (depthwise included) so that both weight ranges match; BatchNorm is folded first. Exact in float."""

    method: Literal["equalize"] = "equalize"
    int8_preparation: ClassVar[bool] = True
    iterations: int = Field(10, gt=0, description="sweeps over the pairs (a chain of pairs converges over sweeps)")
    through_relu6: bool = Field(
        False, description="also pairs joined by ReLU6, scaling only channels the calibration data keeps below "
        "6/margin (exact on that data, not guaranteed beyond it)")
    margin: float = Field(1.5, ge=1, description="headroom below the ReLU6 clip, for through_relu6")
    max_scale: float = Field(100.0, gt=1, description="no channel is scaled by more than this (or its inverse)")
    ignore: list[str] = Field(default_factory=list, description="conv names to leave alone")


class BiasCorrection(Step):
    """Empirical bias correction: each conv/linear bias absorbs the mean per-channel error that int8
    (weights on the runtime's grid, per-tensor uint8 inputs) adds to its output on calibration data,
    layer by layer in execution order, so corrections upstream are seen downstream."""

    method: Literal["bias-correction"] = "bias-correction"
    int8_preparation: ClassVar[bool] = True
    samples: int = Field(64, gt=0, description="calibration samples (one batch in memory)")
    quantize_inputs: bool = Field(True, description="simulate the per-tensor uint8 activation each layer reads")
    ignore: list[str] = Field(default_factory=list)


class AdaRound(Step):
    """Adaptive rounding (Nagel et al. 2020): per conv/linear, learn whether each weight rounds up or
    down on the per-channel int8 grid (scale max|w|/127) so the layer's output on calibration data
    matches float; the weights end exactly on that grid, so every runtime reproduces the rounding."""

    method: Literal["adaround"] = "adaround"
    int8_preparation: ClassVar[bool] = True
    samples: int = Field(64, gt=0, description="calibration samples whose layer inputs are kept in memory")
    iterations: int = Field(500, gt=0, description="optimiser steps per layer")
    batch: int = Field(16, gt=0, description="samples per step")
    crop: int = Field(16, ge=0, description="spatial window of each sample per step (0 = whole maps)")
    lr: float = Field(1e-2, gt=0)
    regularization: float = Field(0.01, ge=0, description="weight of the term pushing each rounding to 0 or 1")
    warmup: float = Field(0.2, ge=0, lt=1, description="share of iterations without that term")
    quantize_inputs: bool = Field(True, description="learn on the per-tensor uint8 input the runtime feeds")
    seed: int = 0
    ignore: list[str] = Field(default_factory=list)


class Cluster(Step):
    """Weight clustering (parameter sharing): each layer's weights take one of `clusters` shared
    values (k-means), so the exported files deflate far smaller; the layers keep their shapes."""

    method: Literal["cluster"] = "cluster"
    clusters: int = Field(16, ge=2, le=256, description="shared values per layer (or per output channel)")
    granularity: Literal["layer", "channel"] = Field(
        "layer", description="one set of shared values per layer, or one per output channel")
    int8_grid: bool = Field(
        True, description="put every value on its output channel's symmetric int8 grid (scale = max|w|/127), so "
        "a later per-channel int8 quantization maps each weight exactly to its code; with granularity = "
        "\"layer\" the layer then shares int8 codes, each channel scaling them by its own scale")
    fine_tune: Training | None = Field(
        None, description="distil with the weights tied to their clusters (the shared values are trained)")
    ignore: list[str] = Field(default_factory=list, description="module names to leave unclustered")


CompressConfig = Annotated[Union[PruneStructured, PruneUnstructured, LowRank, Distill, Qat, Equalize, BiasCorrection,
                                 AdaRound, Cluster], Field(discriminator="method")]
METHODS = ("prune-structured", "prune-unstructured", "low-rank", "distill", "qat", "equalize", "bias-correction",
           "adaround", "cluster")
