"""Ask the network once before a download library does: offline, a download says so in seconds.

``huggingface_hub`` retries a failed request five times with back-off (about 25 s and a dozen warning lines
before it gives up), and timm's ImageNet weights go through it. A cluster node or a laptop without internet
should hear "offline" at once, with the way out, instead: :func:`unreachable` makes one short request (proxies
from the environment honoured) and :func:`hub_offline` honours ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import urllib.error
import urllib.request

#: Seconds one reachability request may take.
PROBE_TIMEOUT = 4.0


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (``huggingface_hub`` then serves only its cache)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_file_url(repo: str, file: str) -> str:
    """The address ``huggingface_hub`` would fetch (its configured endpoint, ``HF_ENDPOINT``)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo}/resolve/main/{file}"


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` when one HEAD request to ``url`` gets any HTTP answer (even 401 or 404: the server is there);
    otherwise why not, in a few words (no route, name not found, refused, timed out)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - an https URL of a known hub
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"


def timm_weights_cached(name: str) -> bool:
    """Whether timm's pretrained weights of ``name`` are already on this machine (Hugging Face or torch hub cache)."""
    import os

    import torch
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        repo, _, revision = str(hub_id).partition("@")
        for file in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, file, revision=revision or None), str):
                return True
    url = getattr(cfg, "url", None)
    if url:
        return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(str(url))))
    return False


def timm_weights_url(name: str) -> str | None:
    """Where timm would fetch ``name``'s weights from (the hub file, or its own URL)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        return hub_file_url(str(hub_id).partition("@")[0], "model.safetensors")
    return getattr(cfg, "url", None) or None
