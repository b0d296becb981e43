"""Knowledge distillation: the compressed student learns the original teacher's softened outputs."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from edgeport.errors import ConfigError, DataError
from edgeport.pipeline.compress.configs import Qat, Training
from edgeport.pipeline.compress.context import CompressContext
from edgeport.progress import report


def training_data(config: Training | Qat, context: CompressContext,
                  what: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays (by input name) and labels (or None) of a step's `data` source (`what`: the step, in errors)."""
    what = what or config.method
    if config.data is None:
        raise ConfigError(f"{what} needs a training data source: set data = \"digits\" or data = \"npy\" with path")
    if config.data == "digits":
        from edgeport.calibration.digits import digits_split

        x_train, y_train, _, _ = digits_split()
        return {context.inputs[0].name: x_train}, y_train
    if not config.path:
        raise ConfigError(f"{what}: data = \"npy\" needs path (an .npz with one array per input, optional `labels`)")
    path = context.base_dir / config.path
    if not path.is_file():
        raise DataError(f"{what}: training data not found: {path}")
    from edgeport.calibration.sets import read_arrays

    arrays = read_arrays(path)
    if not isinstance(arrays, dict):
        raise DataError(f"{what}: {path} holds one array; give an .npz with one array per input (and `labels`)")
    labels = arrays.pop("labels", None)
    missing = [s.name for s in context.inputs if s.name not in arrays]
    if missing:
        raise DataError(f"{what}: {path} has no array for input(s) {', '.join(missing)}")
    return arrays, labels


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened outputs, times T^2 to keep gradient scale."""
    return nn.functional.kl_div(
        nn.functional.log_softmax(student / temperature, dim=-1),
        nn.functional.log_softmax(teacher / temperature, dim=-1), log_target=True, reduction="batchmean",
    ) * temperature**2


def first(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def distill(model: nn.Module, config: Training, context: CompressContext, what: str = "distill"):
    """Train `model` on the teacher's softened outputs (and labels, if the data has them); keeps the
    epoch that scored best on a held-back part of the training data."""
    arrays, labels = training_data(config, context, what)
    names = [s.name for s in context.inputs]
    total = len(arrays[names[0]])
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(total)
    n_val = max(1, int(total * config.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    tensors = {n: torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names}
    y = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    alpha = config.alpha if y is not None else 1.0

    teacher = context.teacher.eval()
    with torch.no_grad():
        teacher_out = torch.cat([first(teacher(*(tensors[n][i : i + 256] for n in names))) for i in range(0, total, 256)])

    def evaluate() -> tuple[float, float]:
        """(validation accuracy, -soft loss): accuracy with labels, else top-1 agreement with the
        teacher; a small validation set ties often, and the closer match to the teacher breaks it."""
        model.eval()
        with torch.no_grad():
            out = first(model(*(tensors[n][val_idx] for n in names)))
        target = y[val_idx] if y is not None else teacher_out[val_idx].argmax(-1)
        return float((out.argmax(-1) == target).float().mean()), -float(soft_loss(out, teacher_out[val_idx], 1.0))

    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * -(-len(train_idx) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    best_score, best_state, history = evaluate(), copy.deepcopy(model.state_dict()), []
    report(0, config.epochs, "distilling")
    for epoch in range(config.epochs):
        model.train()
        for batch in torch.from_numpy(rng.permutation(train_idx)).split(config.batch_size):
            optimizer.zero_grad()
            out = first(model(*(tensors[n][batch] for n in names)))
            loss = alpha * soft_loss(out, teacher_out[batch], config.temperature)
            if y is not None and alpha < 1:
                loss = loss + (1 - alpha) * nn.functional.cross_entropy(out, y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
        score = evaluate()
        history.append(round(score[0], 4))
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
        report(epoch + 1, config.epochs, f"distill epoch {epoch + 1}: validation {score[0]:.2%} (best {best_score[0]:.2%})")
    model.load_state_dict(best_state)
    return model.eval(), {"validation_score": best_score[0], "history": history, "alpha": alpha,
                          "train_samples": len(train_idx), "validation_samples": n_val}
