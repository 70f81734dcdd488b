"""``rlft export CKPT --to DIR``: a checkpoint as a plain Hugging Face model directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from rlft.config import ModelConfig
from rlft.modeling import load_tokenizer
from rlft.tiny_model import resolve_model_path


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write the policy of checkpoint ``ckpt`` (LoRA adapters merged) and its tokenizer to ``out``
    (created atomically),
    loadable with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained(out)``."""
    from transformers import AutoModelForCausalLM

    ckpt, out = Path(ckpt), Path(out)
    policy = ckpt / "policy"
    config_path = ckpt.parent.parent / "config.yaml"  # <run>/checkpoints/step_N -> <run>/config.yaml
    lora = (policy / "adapter_config.json").is_file()
    if not (lora or (policy / "config.json").is_file()):
        raise FileNotFoundError(f"{ckpt} is not an rlft checkpoint: it has no policy/config.json")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no run config at {config_path}: the checkpoint must stay inside its run directory"
        )
    if out.exists():
        raise FileExistsError(f"{out} exists; export into a new directory")
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(config_path).model)
    tokenizer = load_tokenizer(OmegaConf.to_object(model_cfg))
    if lora:  # the base model with the trained adapters merged into its weights
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_cfg.path))
        model = PeftModel.from_pretrained(base, policy).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(policy)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
