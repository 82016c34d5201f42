"""PEFT export/import logit parity figures, as JSON.

Uses the test suite's builders: a tiny random LlamaForCausalLM converted with
`mixlora convert`; adapters with random non-zero A and B; PEFT 0.21 loads our
exports on the original Transformers model, and we import PEFT-made adapters.

    python benchmarks/peft_parity.py --out benchmarks/results/peft_parity.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlx_mixlora  # noqa: F401  # isort: split  (OpenBLAS before mlx.core)
from mlx_mixlora.bench.report import publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    from conftest import make_hf_llama
    from mlx_mixlora.convert import ConvertOptions, convert_hf_to_mlx
    from mlx_mixlora.convert.peft import export_peft, import_peft
    from mlx_mixlora.convert.to_hf import export_hf
    from peft import LoraConfig, PeftModel, get_peft_model
    from test_peft import hf_model, our_logits, random_adapter, torch_logits
    from transformers import AutoModelForCausalLM

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_hf_llama(tmp / "hf")
        mlx_dir = convert_hf_to_mlx(str(src), tmp / "mlx", ConvertOptions(dtype="float32"))
        for rslora in (False, True):
            ad = random_adapter(
                mlx_dir,
                tmp / f"ad{rslora}",
                rslora=rslora,
                rank_pattern={"model.layers.1.self_attn.v_proj": 2},
            )
            export_peft(ad, tmp / f"peft{rslora}")
            peft_model = PeftModel.from_pretrained(hf_model(src), str(tmp / f"peft{rslora}")).eval()
            ours = our_logits(mlx_dir, ad)
            rows.append(
                {
                    "case": f"export ours->PEFT (rslora={rslora}, per-module rank)",
                    "max_abs_diff": float(np.abs(ours - torch_logits(peft_model)).max()),
                    "adapter_effect": float(np.abs(ours - torch_logits(hf_model(src))).max()),
                }
            )
            export_hf(mlx_dir, tmp / f"full{rslora}", adapter_dir=ad)
            full = AutoModelForCausalLM.from_pretrained(
                str(tmp / f"full{rslora}"), dtype=torch.float32
            ).eval()
            rows.append(
                {
                    "case": f"export hf (fused full checkpoint, rslora={rslora})",
                    "max_abs_diff": float(np.abs(ours - torch_logits(full)).max()),
                }
            )
            torch.manual_seed(0)
            cfg = LoraConfig(
                r=4,
                lora_alpha=12,
                target_modules=["q_proj", "v_proj", "gate_proj"],
                use_rslora=rslora,
                rank_pattern={"v_proj": 2},
                alpha_pattern={"gate_proj": 3},
                init_lora_weights=False,
                task_type="CAUSAL_LM",
            )
            pm = get_peft_model(hf_model(src), cfg).eval()
            pm.save_pretrained(str(tmp / f"made{rslora}"))
            import_peft(tmp / f"made{rslora}", tmp / f"imp{rslora}", model_dir=mlx_dir)
            rows.append(
                {
                    "case": f"import PEFT->ours (rslora={rslora}, per-module rank and alpha)",
                    "max_abs_diff": float(
                        np.abs(our_logits(mlx_dir, tmp / f"imp{rslora}") - torch_logits(pm)).max()
                    ),
                }
            )
    publish({"command": " ".join(sys.argv), "results": rows}, args.out)


if __name__ == "__main__":
    main()
