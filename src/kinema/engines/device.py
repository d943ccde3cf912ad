"""Choosing where and in which precision a model runs, and checking it fits before loading it."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.errors import InsufficientResources
from kinema.settings import Settings

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SAFETENSORS_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
GIB = 1024**3


@dataclass(frozen=True)
class Placement:
    """Device and dtype a model is loaded to, plus the capabilities found there."""

    device: torch.device
    dtype: torch.dtype
    fp8: bool
    compile: bool

    @property
    def key(self) -> str:
        return f"{self.device}:{self.dtype}:{'fp8' if self.fp8 else ''}:{'compiled' if self.compile else ''}"


def cuda_supports_fp8() -> bool:
    """FP8 storage is worth it on Ada/Hopper and newer (compute capability 8.9+)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def worker_device(index: int, settings: Settings) -> str:
    """The device local worker `index` owns: its listed GPU (KINEMA_GPUS), else GPU `index`; the CPU on a
    machine without CUDA. Two workers never share a GPU: each would load its own copy of the model."""
    if settings.gpus:
        return f"cuda:{settings.gpus[index]}"
    if settings.device in ("cpu", "mps"):
        return settings.device
    if not torch.cuda.is_available():
        if settings.device == "cuda":
            raise InsufficientResources("KINEMA_DEVICE=cuda but no CUDA device is available to PyTorch")
        return "cpu"
    count = torch.cuda.device_count()
    if index >= count:
        raise InsufficientResources(
            f"local worker {index} has no GPU of its own: {count} visible; set KINEMA_WORKERS to at most"
            f" {count}, or list the GPUs with KINEMA_GPUS / --gpus"
        )
    return f"cuda:{index}"


def choose_placement(settings: Settings, device_name: str | None = None) -> Placement:
    """CUDA with bfloat16 where present, CPU float32 otherwise; settings override both.

    device_name is a worker's own device ("cuda:1", "cpu"); without one, settings.device decides.
    """
    if device_name is not None:
        device = torch.device(device_name)
    elif settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InsufficientResources("KINEMA_DEVICE=cuda but no CUDA device is available to PyTorch")
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[settings.dtype]
    fp8 = settings.fp8 and device.type == "cuda" and cuda_supports_fp8()
    compile_ = settings.compile and device.type == "cuda"
    return Placement(device=device, dtype=dtype, fp8=fp8, compile=compile_)


def safetensors_parameter_count(path: Path) -> int:
    """Number of elements stored in a .safetensors file, read from its header only."""
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    count = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        count += (end - begin) // _SAFETENSORS_ITEMSIZE.get(info["dtype"], 2)
    return count


def component_bytes(
    model_dir: Path, dtype: torch.dtype, fp8: bool, *, folders: set[str] | None = None
) -> dict[str, int]:
    """Bytes each pipeline component will take once loaded in `dtype` (only `folders`, when given).

    Root-level single files (a distilled checkpoint, a LoRA) count under their own names; the transformer
    folders and the single-file transformer are what FP8 storage shrinks.
    """
    itemsize = torch.tensor([], dtype=dtype).element_size()
    sizes: dict[str, int] = {}
    files = [*model_dir.glob("*/*.safetensors"), *model_dir.glob("*.safetensors")]
    for file in sorted(files):
        component = file.parent.name if file.parent != model_dir else file.name
        if folders is not None and component not in folders:
            continue
        is_transformer = component.startswith("transformer") or (
            file.parent == model_dir and "lora" not in file.name
        )
        per_param = 1 if (fp8 and is_transformer) else itemsize
        sizes[component] = sizes.get(component, 0) + safetensors_parameter_count(file) * per_param
    return sizes


def available_bytes(device: torch.device, settings: Settings) -> int:
    """Memory the device offers kinema: total GPU memory, or available RAM, capped by settings."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        found = int(total)
    else:
        found = _available_ram()
    if settings.max_memory_gb is not None:
        found = min(found, int(settings.max_memory_gb * GIB))
    return found


def _available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def required_bytes(sizes: dict[str, int], offload: str) -> int:
    """Peak weight memory for an offload mode, with 10% headroom for activations."""
    if not sizes:
        return 0
    if offload == "sequential":
        peak = max(sizes.values()) // 8
    elif offload == "model":
        peak = max(sizes.values())
    else:
        peak = sum(sizes.values())
    return int(peak * 1.1)


def text_encoder_placement(sizes: dict[str, int], have: int, device_type: str, offload: str) -> str | None:
    """Where the text encoder goes if the model fits: "device" with the rest, "cpu" when only keeping it
    off a GPU makes the rest fit, or None when even that is not enough."""
    if required_bytes(sizes, offload) <= have:
        return "device"
    if device_type == "cuda" and offload == "none" and "text_encoder" in sizes:
        # Gemma (12B, ~24 GB) is used once per prompt and its embeddings are cached: keep it on the CPU
        # rather than refusing a GPU that holds everything else.
        rest = {k: v for k, v in sizes.items() if k != "text_encoder"}
        if required_bytes(rest, "none") <= have:
            return "cpu"
    return None


def check_fits(
    app_id: str,
    model_dir: Path,
    placement: Placement,
    settings: Settings,
    *,
    folders: set[str] | None = None,
) -> str:
    """Fail fast, before loading anything, when the device cannot hold the model; say where the text
    encoder goes: "device" (all on one device), or "cpu" when only that keeps the rest on the GPU."""
    sizes = component_bytes(model_dir, placement.dtype, placement.fp8, folders=folders)
    need = required_bytes(sizes, settings.offload)
    have = available_bytes(placement.device, settings)
    text_encoder = text_encoder_placement(sizes, have, placement.device.type, settings.offload)
    if text_encoder is not None:
        return text_encoder
    hint = (
        "try KINEMA_OFFLOAD=model (or sequential), KINEMA_FP8=1 on an Ada/Hopper GPU, or a bigger GPU"
        if placement.device.type == "cuda"
        else "it needs a GPU: install the CUDA build of torch (see README)"
    )
    raise InsufficientResources(
        f"{app_id} needs about {need / GIB:.1f} GiB on {placement.device.type}"
        f" in {str(placement.dtype).removeprefix('torch.')}"
        f" but only {have / GIB:.1f} GiB is available; {hint}",
        details={"required_bytes": need, "available_bytes": have},
    )
