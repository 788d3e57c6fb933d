"""The training recipes and options that only a GPU run would otherwise meet: the GPU recipe parses
(through the real LightningCLI, on a CPU, with no weights) into the settings it promises, and
`compile` trains through torch.compile (its aot_eager backend) to the losses and weights of the eager module."""

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from jobs.train import main as train_main
from training.conditioning import MASK_KINDS, check_mask_mix
from training.model import preset
from training.module import VideoDiTModule


def test_the_gpu_recipe_parses_on_a_cpu_into_what_it_promises(capsys):
    """`reelmill train fit --config dit-b-gpu --print_config`: LightningCLI resolves every class_path and
    checks every init_arg against its signature, and stops before building a Trainer or a model, so
    neither a GPU nor weights are needed."""
    with pytest.raises(SystemExit) as done:
        train_main(["fit", "--config", "dit-b-gpu", "--print_config"])
    printed_err = capsys.readouterr()
    assert done.value.code in (0, None), printed_err.err[-3000:]
    printed = yaml.safe_load(printed_err.out)
    trainer, model, data = printed["trainer"], printed["model"], printed["data"]
    assert (trainer["accelerator"], trainer["strategy"], trainer["precision"]) == ("gpu", "ddp", "bf16-mixed")
    assert trainer["devices"] == "auto" and trainer["default_root_dir"] == "runs/dit-b-gpu"
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "training.sample_callback.SampleVideos",
        "training.eval_callback.EvalMetrics",
        "training.data.LoaderStatsCallback",
    ]
    checkpoint = trainer["callbacks"][0]["init_args"]
    assert checkpoint["every_n_train_steps"] == 2000 and checkpoint["save_last"] is True
    assert model["model"] == "B" and model["schedule"] == "cosine" and model["ema_decay"] == 0.9999
    mix = check_mask_mix(model["mask_mix"])  # the module's own check: known kinds, shares summing to 1
    assert mix == pytest.approx(
        {"none": 0.6, "first_frame": 0.15, "prefix": 0.1, "keyframes": 0.1, "boxes": 0.05}
    )
    assert set(mix) == set(MASK_KINDS) and mix["none"] == max(mix.values())
    assert model["vae"]["cls"] == "AutoencoderKLWan" and model["text_encoder"]["kind"] == "t5"
    assert (data["kind"], data["num_frames"], data["height"], data["width"]) == ("video", 61, 256, 256)
    # the header's arithmetic: Wan's VAE makes 61 frames of 256x256 16 x 32 x 32 latents (4x in time,
    # 8x in space), and B's patch cuts those into 4096 tokens
    pt, ph, pw = preset(model["model"]).patch
    latent = ((data["num_frames"] - 1) // 4 + 1, data["height"] // 8, data["width"] // 8)
    assert latent == (16, 32, 32) and (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw) == 4096


C, D = 4, 16  # latent channels and text width of the compiled model
STEPS = 3


class LossPerStep(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def train_a_few_steps(compile: bool | str, root) -> tuple[list[float], dict, dict]:
    """The training loss of each of `STEPS` steps of the tiny module, and its weights before and after,
    seeded the same way every time. Its zero-initialized (adaLN-Zero) layers get random weights first, so
    every weight has a gradient from the first step on, and Adam's later steps depend on the gradients'
    sizes, not only their signs."""
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "latents": torch.randn(C, 2, 4, 4, generator=g),
            "text": torch.randn(3, D, generator=g),
            "text_mask": torch.ones(3, dtype=torch.bool),
        }
        for _ in range(2 * STEPS)
    ]
    L.seed_everything(0, verbose=False)
    module = VideoDiTModule(
        "tiny", {"in_channels": C, "text_dim": D}, lr=1e-2, warmup_steps=1, compile=compile
    )
    with torch.no_grad():
        for p in module.model.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=g)
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    seen = LossPerStep()
    L.Trainer(
        accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[seen], default_root_dir=root,
    ).fit(module, DataLoader(items, batch_size=2))  # fmt: skip
    if compile:  # the module trained through the compiled wrapper
        assert isinstance(module.net(), torch._dynamo.eval_frame.OptimizedModule)
    return seen.losses, before, dict(module.model.named_parameters())


def test_a_compiled_module_trains_to_the_losses_and_weights_of_the_eager_one(tmp_path):
    """`compile="aot_eager"` trains through torch.compile's wrapper: TorchDynamo captures the model's forward
    (one graph, no fallback to eager) and AOTAutograd builds its joint forward and backward graphs, and
    every step's loss and the final weights are the eager module's. The backend is `aot_eager`, which
    runs the graphs AOTAutograd makes instead of handing them to inductor: inductor's C++ code generation
    is PyTorch's own and costs one to three minutes on a two-core CPU; the capture and the autograd
    graphs are where this model's code can break compilation."""
    from torch._dynamo.utils import counters

    eager, start, eager_end = train_a_few_steps(False, tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    compiled, compiled_start, compiled_end = train_a_few_steps("aot_eager", tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # one graph: no graph break
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(compiled) == len(eager) == STEPS and all(torch.isfinite(torch.tensor(compiled)))
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6)
    for name, weight in compiled_end.items():
        assert torch.equal(compiled_start[name], start[name]), name  # the same start
        # Adam normalizes each step by the gradient's size, so weights with tiny gradients move by
        # lr whatever rounding says: compare how far each weight moved, tensor by tensor
        moved, eager_moved = (weight - start[name]).detach(), (eager_end[name] - start[name]).detach()
        assert eager_moved.norm() > 0, name  # every weight trained
        assert (moved - eager_moved).norm() < 0.01 * eager_moved.norm(), name
