"""mlx-lm where it does the same job: its LoRA trainer, and `generate_step` decode on the base.

Prefill, merge and routing have no mlx-lm counterpart (its model forward is the
one our package runs), so those rows come only from `mlx_backend`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlx_mixlora  # noqa: F401  # isort: skip  (BLAS preload before mlx.core)
import mlx.core as mx
import mlx.optimizers as optim
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load_model as mlx_lm_load_model

from ..cpu.system import device_name
from .mlx_backend import decode_tps, load_fp32, warm_runs
from .rows import row, train_row
from .spec import TARGETS, BenchSpec, Sizes
from .timing import max_rss_gb, train_summary

WORKLOADS = ("train", "decode")


def train_mlx_lm(model_dir: str | Path, data: dict, workload: str = "a",
                 sizes: Sizes = Sizes()) -> dict:  # fmt: skip
    """mlx-lm's `tuner.trainer.train` with its LoRA layers, on the same examples as ours."""
    model, config = load_fp32(model_dir)
    model.freeze()
    linear_to_lora_layers(
        model,
        config["num_hidden_layers"],
        {"rank": sizes.rank, "scale": sizes.alpha / sizes.rank, "dropout": 0.0,
         "keys": [f"self_attn.{t}" for t in TARGETS]},
    )  # fmt: skip
    if workload == "a":
        items = [(ids, 0) for ids in data["a"]]
        max_len = len(data["a"][0])
    else:
        items = [(p + c, len(p)) for p, c in data["b"]]
        max_len = 512
    batch = 4
    iters = len(items) // batch

    class Logged:
        """A dataset that records which examples each batch read."""

        def __init__(self):
            self.reads: list[int] = []

        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            self.reads.append(i)
            return items[i]

    ds = Logged()
    times: list[float] = []
    cpu_marks: list[float] = []
    losses: list[float] = []

    class CB(TrainingCallback):
        def on_train_loss_report(self, info):
            times.append(1.0 / info["iterations_per_second"])
            cpu_marks.append(time.process_time())
            losses.append(info["train_loss"])

    mx.reset_peak_memory()
    with tempfile.TemporaryDirectory() as tmp:
        cpu_marks.append(time.process_time())
        args = TrainingArgs(
            batch_size=batch,
            iters=iters,
            steps_per_report=1,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=max_len,
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
        )
        train(
            model,
            optim.AdamW(learning_rate=sizes.lr, weight_decay=0.0),
            ds,
            None,
            args=args,
            training_callback=CB(),
        )
    reads = ds.reads[len(items) :]  # the first len(items) reads are its length sort
    step_tokens = [
        sum(min(len(items[i][0]), max_len) - 1 for i in reads[s * batch : (s + 1) * batch])
        for s in range(iters)
    ]
    cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:], strict=False)]
    out = train_summary(step_tokens, times, cpu)
    out.update(
        peak_mlx_memory_gb=round(mx.get_peak_memory() / 2**30, 3),
        max_rss_gb=round(max_rss_gb(), 3),
        final_loss=losses[-1],
        config={"batch_size": batch, "max_seq_length": max_len, "mask_prompt": workload == "b"},
    )
    return out


def run(workload: str, spec: BenchSpec, enabled: set[str]) -> list[dict]:
    s = spec.sizes
    common = {"device": device_name(), "dtype": spec.dtype}
    if workload == "train":
        r = train_mlx_lm(spec.model_dir, {"a": spec.arrays()["train"].tolist()}, "a", s)
        return [train_row("mlx-lm", "mlx_lm.tuner.trainer.train (fp32)", r,
                          r["peak_mlx_memory_gb"], "mlx peak", **common)]  # fmt: skip
    model, _ = mlx_lm_load_model(Path(spec.model_dir))
    if spec.dtype != "float32":
        model.set_dtype(getattr(mx, spec.dtype))
    prompt = mx.array(spec.arrays()["decode"].tolist())
    runs, peak = warm_runs(lambda: decode_tps(model, prompt, s.decode_tokens), s)
    return [
        row("decode", "base", "mlx-lm", "tokens_per_s", runs, "mlx_lm.utils.load_model + generate_step",
            peak, "mlx peak", **common, prompt_tokens=int(prompt.size), decode_tokens=s.decode_tokens)
    ]  # fmt: skip
