"""Foreign files built the way their authors' code builds them, for the tests of the code that reads them.

A fixture of a published file must be that file, not our idea of it: our own look-alikes passed while the real
checkpoints were refused. Each builder here follows the authors' code step by step and says where (repository,
file, line or function, at the commit the project's search index holds); only the weights are random and the
networks small where the original's size would not fit a CI run.

- Mammo-CLIP (``batmanlab/Mammo-CLIP``, commit 0d0ed4bd / 99be75cb): :func:`mammo_clip_checkpoint`.
- Mammo-FM (``batmanLab/Mammo-FM``): the same layout and save call (its checkpoints carry the B5 detector encoder).
- RSNA 2023 first place (``dangnh0611/kaggle_rsna_breast_cancer``, commit 4cb4684e): :func:`rsna2023_checkpoint`,
  saved by timm's ``CheckpointSaver`` as vendored in the solution's ``src/pytorch-image-models``.
- NYU GMIC (``nyukat/GMIC``, commit 263d5aa9): :func:`gmic_predictions_csv`, the ``predictions.csv`` its
  ``src/scripts/run_model.py`` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

MAMMO_CLIP_MEAN, MAMMO_CLIP_STD = 0.3089279, 0.25053555408335154


# ------------------------------------------------------------------------------------------------ Mammo-CLIP


class AuthorsImageEncoder(nn.Module):
    """Mammo-CLIP's image encoder as ``breastclip/model/modules/__init__.py`` builds it (line 39:
    ``EfficientNet.from_pretrained("efficientnet-b2", num_classes=1)``; line 45: ``"efficientnet-b5"``) from the
    authors' vendored ``modules/efficientnet_custom.py``: lukemelas' ``efficientnet-pytorch`` with the final linear
    layer commented out in ``EfficientNet.__init__`` (``#     self._fc = nn.Linear(...)``), so its ``forward``
    returns the pooled features (``_avg_pooling``, ``flatten``, ``_dropout``: identity in eval mode).

    The package gives the identical blocks; ``_fc`` is deleted so the state dict has the authors' keys.
    """

    def __init__(self, name: str = "efficientnet-b2", seed: int = 0):
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        torch.manual_seed(seed)
        net = EfficientNet.from_name(name, num_classes=1)  # from_pretrained's architecture; no ImageNet download
        del net._fc
        # Random weights *and* BatchNorm statistics, measured on noise normalised as Mammo-CLIP's inputs are (as
        # training leaves them): with the package's unit statistics the features barely vary between images.
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
                module.momentum = None
                module.reset_running_stats()
        net.train()
        with torch.no_grad():
            for _ in range(4):
                net.extract_features((torch.rand(8, 3, 96, 96) - MAMMO_CLIP_MEAN) / MAMMO_CLIP_STD)
        self.net = net.eval()
        self.eval()

    def state_dict_as_saved(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # efficientnet_custom.py EfficientNet.forward, tensor input
        x = self.net._avg_pooling(self.net.extract_features(images))
        return self.net._dropout(x.flatten(start_dim=1))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)


def authors_input(grey: np.ndarray) -> torch.Tensor:
    """A grey image as the authors' dataset feeds it: ``Datasets/dataset_concepts.py`` ``MammoDataset.__getitem__``
    reads the PNG as RGB (line 39, ``Image.open(img_path).convert('RGB')``: three equal channels), then (lines 57-61)
    ``img -= img.min(); img /= img.max(); (img - mean) / std``; the classifier permutes it to ``(B, 3, H, W)``."""
    img = np.repeat(grey[..., None], 3, axis=-1).astype("float32")
    img -= img.min()
    img /= img.max()
    img = torch.tensor((img - MAMMO_CLIP_MEAN) / MAMMO_CLIP_STD, dtype=torch.float32)
    return img.permute(2, 0, 1)[None]


def convert_dictconfig_to_dict(cfg: Any) -> Any:
    """``breastclip/util/utils.py`` lines 20-24 (as in the fork SmokeyFiend58/Mammo-CLIP; the same function as cxr-clip's):
    only ``DictConfig`` nodes become dicts, so every ``ListConfig`` stays an OmegaConf object in the saved config."""
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        return {k: convert_dictconfig_to_dict(v) for k, v in cfg.items()}
    return cfg


def mammo_clip_config(encoder: str) -> dict[str, Any]:
    """The resolved Hydra config ``train.py`` passes to ``run`` (line 15 ``OmegaConf.resolve(cfg)``, line 32
    ``convert_dictconfig_to_dict``), composed from ``configs/pre_train_b{2,5}_clip.yaml`` with
    ``model/clip_b{2,5}_det_clinical.yaml``, ``transform/clahe.yaml`` (its ``affine_scale: [0.8, 1.2]``, a ListConfig)
    and the optimiser/scheduler defaults. Hydra's own ``${hydra:run.dir}`` paths are written out."""
    from omegaconf import OmegaConf

    run_dir = f"outputs/upmc_clip/{'b5' if 'b5' in encoder else 'b2'}_detector_period_n"
    cfg = OmegaConf.create({
        "base": {"data_dir": "/data", "period": "n", "resume_training": False, "epoch_to_start": 0, "fold": 0,
                 "seed": 10, "amp": True, "mean": MAMMO_CLIP_MEAN, "std": MAMMO_CLIP_STD, "image_size_h": 1520,
                 "image_size_w": 912, "text_max_length": 256, "loss_best": "contrastive", "data_frac": 1.0,
                 "zs_prompts": {"upmc": ["birads category 0", "birads category 1", "birads category 2"],
                                "rsna": ["no malignancy", "malignancy"]},
                 "output": {"args_path": run_dir, "checkpoint": f"{run_dir}/checkpoints/",
                            "tensorboard": f"{run_dir}/tensorboard/"}},
        "transform": {"train": {"Resize": {"size_h": "${base.image_size_h}", "size_w": "${base.image_size_w}"},
                                "transform": {"affine_transform_degree": 20, "affine_translate_percent": 0.1,
                                              "affine_scale": [0.8, 1.2], "affine_shear": 20,
                                              "elastic_transform_alpha": 10, "elastic_transform_sigma": 15, "p": 1.0}},
                      "valid": {"Resize": {"size_h": "${base.image_size_h}", "size_w": "${base.image_size_w}"}}},
        "model": {"name": "clip_custom", "temperature": 0.07,
                  "image_encoder": {"source": "cnn", "name": encoder, "pretrained": True, "model_type": "cnn"},
                  "text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT", "pretrained": True,
                                   "gradient_checkpointing": False, "pooling": "eos", "trust_remote_code": True,
                                   "mlm_head": True, "cache_dir": "/data/huggingface/"},
                  "projection_head": {"name": "linear", "dropout": 0.1, "proj_dim": 512}},
        "optimizer": {"name": "adamw", "config": {"lr": 5e-5, "weight_decay": 1e-4}},
        "scheduler": {"name": "cosine_epoch15_warmup1", "config": {"total_epochs": 15, "warmup_epochs": 1}},
    })
    OmegaConf.resolve(cfg)
    return convert_dictconfig_to_dict(cfg)


class LinearWarmupCosineAnnealingLR(torch.optim.lr_scheduler.LambdaLR):
    """``breastclip/scheduler/warmup_cosine.py``: a LambdaLR whose lambda is a bound method (its state_dict then
    saves the method's ``__dict__``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, last_epoch: int = -1):
        self.tsteps, self.wsteps = total_steps, warmup_steps
        super().__init__(optimizer, self._lr_multiplier, last_epoch)

    def _lr_multiplier(self, step: int) -> float:
        if step < self.wsteps:
            return step / float(max(1, self.wsteps))
        return max(0.0, math.cos((step - self.wsteps) / (self.tsteps - self.wsteps) * (math.pi / 2)) ** 2)


@contextlib.contextmanager
def saved_on_cuda() -> Iterator[None]:
    """``torch.save`` tags every storage with the device it lives on; the authors trained on ``cuda:0``. The tag is
    all that differs in the file (the bytes are the same), so it is written as torch writes it for a GPU tensor."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.serialization.location_tag = original  # type: ignore[assignment]


def mammo_clip_checkpoint(encoder: AuthorsImageEncoder, path: Path, *, encoder_name: str = "tf_efficientnetv2-detect",
                          epoch: int = 10) -> Path:
    """A checkpoint as ``breastclip/trainer.py`` ``run()`` saves it after each epoch: ``torch.save({"model":
    model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "config": cfg,
    "epoch": epoch + 1, "train_loss": train_loss_dict["total"]}, checkpoint)``, with the model on ``cuda:0``.

    The model's state dict is ``BreastClip``'s (``breastclip/model/clip.py``): ``image_encoder.*`` (line 18), the
    Hugging Face text encoder under ``text_encoder.text_encoder.*`` (line 19; a two-layer stand-in for
    Bio_ClinicalBERT, whose 110 M parameters do not fit CI), ``image_projection.projection.*`` and
    ``text_projection.projection.*`` (lines 28-33, ``modules/projection.py`` ``LinearProjectionHead``) and
    ``logit_scale`` (line 41). The optimiser is AdamW (``breastclip/optimizer/__init__.py``) after steps that gave
    gradients to the projections and the stem (AdamW keeps state only for parameters that had one).
    """
    config = mammo_clip_config(encoder_name)
    out_dim = encoder.net._conv_head.out_channels  # 1408 (B2), 2048 (B5): image_encoder.out_dim
    model = nn.Module()
    model.image_encoder = encoder.net
    text = nn.Module()
    text.text_encoder = _tiny_bert()
    model.text_encoder = text
    for name, dim in (("image_projection", out_dim), ("text_projection", 32)):
        head = nn.Module()
        head.projection = nn.Linear(dim, 512)
        setattr(model, name, head)
    model.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-4)
    scheduler = LinearWarmupCosineAnnealingLR(optimizer, total_steps=150, warmup_steps=10)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        feats = model.image_encoder._conv_stem(torch.rand(1, 3, 8, 8)).mean()
        loss = model.image_projection.projection(torch.rand(2, out_dim)).pow(2).mean() + feats
        loss = loss + model.text_projection.projection(torch.rand(2, 32)).mean() * model.logit_scale
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_loss = 0.0 + torch.tensor([1.25, 1.5]).mean()  # avg_loss_dict["total"]: 0.0 += detached CPU tensors
    with saved_on_cuda():
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "config": config, "epoch": epoch,
                    "train_loss": train_loss}, path)
    return path


def _tiny_bert() -> nn.Module:
    """A stand-in with the key names of ``transformers``' ``BertModel`` (embeddings, one layer), small sizes."""
    bert = nn.Module()
    emb = nn.Module()
    emb.word_embeddings, emb.position_embeddings = nn.Embedding(50, 32), nn.Embedding(16, 32)
    emb.token_type_embeddings, emb.LayerNorm = nn.Embedding(2, 32), nn.LayerNorm(32)
    emb.register_buffer("position_ids", torch.arange(16)[None])
    bert.embeddings = emb
    layer = nn.Module()
    attention = nn.Module()
    attention.self = nn.Module()
    attention.self.query, attention.self.key, attention.self.value = (nn.Linear(32, 32) for _ in range(3))
    layer.attention = attention
    encoder = nn.Module()
    encoder.layer = nn.ModuleList([layer])
    bert.encoder = encoder
    return bert


# ------------------------------------------------------------------------------------------------ RSNA 2023

#: ``src/submit/submit.py``'s ``model_info`` (``main()``) and ``src/submit/model.py`` lines 15-22.
RSNA_MODEL_INFO = {"model_name": "convnext_small.fb_in22k_ft_in1k_384", "num_classes": 1, "in_chans": 3,
                   "global_pool": "max"}


def rsna2023_checkpoint(path: Path, *, arch: str = "convnext_atto", seed: int = 0) -> tuple[Path, nn.Module, nn.Module]:
    """A checkpoint as the solution's training saves it: timm's training script (``train_exp.py``, a fork of timm's
    ``train.py``) with ``--model-ema``, through ``timm/utils/checkpoint_saver.py`` ``CheckpointSaver._save`` of the
    timm it vendors (0.9): ``{'epoch', 'arch': args.model, 'state_dict': get_state_dict(model, unwrap_model),
    'optimizer': optimizer.state_dict(), 'version': 2, 'args': args, 'amp_scaler': loss_scaler.state_dict(),
    'state_dict_ema': get_state_dict(model_ema, unwrap_model), 'metric': ...}``; ``unwrap_model`` leaves no
    ``module.`` prefix. ``args`` is the script's ``argparse.Namespace`` (with the ``torch.device`` it trained on);
    the storages were on ``cuda:0``. ``arch`` is a small ConvNeXt (the published one is ``convnext_small``).

    Returns:
        ``(path, raw model, EMA model)``: the EMA model is the published one (timm loads ``state_dict_ema`` first).
    """
    import timm
    from timm.utils import ModelEmaV2, get_state_dict, unwrap_model

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=RSNA_MODEL_INFO["num_classes"],
                              in_chans=RSNA_MODEL_INFO["in_chans"], global_pool=RSNA_MODEL_INFO["global_pool"])
    ema = ModelEmaV2(model, decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(3):  # EMA and raw weights now differ
        optimizer.zero_grad()
        model(torch.rand(2, 3, 64, 64)).mean().backward()
        optimizer.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ema.update(model)
    args = argparse.Namespace(model=RSNA_MODEL_INFO["model_name"], model_ema=True, model_ema_decay=0.9998,
                              gp=RSNA_MODEL_INFO["global_pool"], num_classes=1, in_chans=3, lr=1e-4,
                              device=torch.device("cuda", 0), distributed=False, world_size=1, rank=0)
    # NativeScaler.state_dict_key == "amp_scaler"; torch's GradScaler.state_dict() of a scaler in use on a GPU
    amp_scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                  "_growth_tracker": 0}
    save_state = {"epoch": 11, "arch": args.model, "state_dict": get_state_dict(model, unwrap_model),
                  "optimizer": optimizer.state_dict(), "version": 2, "args": args, "amp_scaler": amp_scaler,
                  "state_dict_ema": get_state_dict(ema, unwrap_model), "metric": 0.4973}
    with saved_on_cuda():
        torch.save(save_state, path)
    return path, model.eval(), ema.module.eval()


def rsna2023_input(grey: np.ndarray, model: nn.Module) -> torch.Tensor:
    """The solution's input: an 8-bit grey crop saved as PNG and read back with ``cv2.imread`` (3 equal channels,
    ``submit.py`` ``resize_and_pad`` ``expand(-1, -1, 3)``), ``.float()`` (0-255), then ``model.py`` lines 25-26 and
    37: ``(x - mean * 255) / (std * 255)`` with the model's ImageNet mean/std per channel."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255
    x = torch.from_numpy(np.repeat(grey[..., None], 3, axis=-1)).permute(2, 0, 1)[None].float()
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------ NYU GMIC

#: ``src/constants.py``: ``VIEWS.LIST = [L_CC, R_CC, L_MLO, R_MLO]`` with the names ``"L-CC"``, ``"R-CC"``, ...
GMIC_VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


def gmic_predictions_csv(exam_list: list[dict[str, Any]], predict: Any, output_path: Path) -> Path:
    """``predictions.csv`` as nyukat/GMIC ``src/scripts/run_model.py`` writes it (commit 263d5aa9).

    ``run_model`` walks ``exam_list`` (each exam a dict: ``datum[view][0]`` the image's short file path, e.g.
    ``0_L-CC``, and ``datum["cancer_label"]`` with ``left_benign`` ... ``right_malignant``) view by view in
    ``VIEWS.LIST`` order, calls the model (here ``predict(short_file_path) -> (benign_pred, malignant_pred)``: its two
    sigmoid outputs) and fills ``pred_dict = {"image_index": [], "benign_pred": [], "malignant_pred": [],
    "benign_label": [], "malignant_label": []}``, labels from ``fetch_cancer_label_by_view``; ``start_experiment``
    then writes ``output_df.to_csv(os.path.join(output_path, "predictions.csv"), index=False, float_format='%.4f')``.
    """
    import pandas as pd

    def fetch_cancer_label_by_view(view: str, cancer_label: dict[str, int]) -> tuple[int, int]:
        if view in ["L-CC", "L-MLO"]:
            return cancer_label["left_benign"], cancer_label["left_malignant"]
        return cancer_label["right_benign"], cancer_label["right_malignant"]

    pred_dict: dict[str, list[Any]] = {"image_index": [], "benign_pred": [], "malignant_pred": [],
                                       "benign_label": [], "malignant_label": []}
    for datum in exam_list:
        for view in GMIC_VIEWS:
            short_file_path = datum[view][0]
            benign_pred, malignant_pred = predict(short_file_path)
            benign_label, malignant_label = fetch_cancer_label_by_view(view, datum["cancer_label"])
            pred_dict["image_index"].append(short_file_path)
            pred_dict["benign_pred"].append(benign_pred)
            pred_dict["malignant_pred"].append(malignant_pred)
            pred_dict["benign_label"].append(benign_label)
            pred_dict["malignant_label"].append(malignant_label)
    output_df = pd.DataFrame(pred_dict)
    output_path.mkdir(parents=True, exist_ok=True)
    output_df.to_csv(output_path / "predictions.csv", index=False, float_format="%.4f")
    return output_path / "predictions.csv"
