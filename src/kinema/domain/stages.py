"""The stages a task goes through, named once: the runner's log lines, the CLI's bar and the playground's
checklist all read their labels from here (the API serves them with each app)."""

from __future__ import annotations

# Every stage any engine reports, in the order a run meets them, with its label.
STAGE_LABELS: dict[str, str] = {
    "queued": "Queued on the server",
    "load": "Loading the model",
    "encode_text": "Encoding the prompt",
    "denoise": "Denoising",
    "upsample": "Upsampling latents x2",
    "decode_video": "Decoding video",
    "decode_audio": "Decoding audio",
    "submit": "Sending the request to the provider",
    "generate": "Generating at the provider",
    "download": "Downloading the provider's video",
    "encode": "Encoding the MP4",
    "store": "Storing the output",
}

# What every run ends with, whatever the engine: the worker encodes (or conforms) and stores.
DELIVERY_STAGES: tuple[str, ...] = ("encode", "store")


def stage_label(name: str) -> str:
    """The label of a stage; an unknown name is shown as it is."""
    return STAGE_LABELS.get(name, name)
