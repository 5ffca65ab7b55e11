"""TRL's private API as this project uses it (m3po_utils/models/trl_api.py) still has the signatures it was written for.

An upgrade of TRL that renames or re-signs one of these fails here, naming the method, instead of silently
computing a different DPO loss.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from m3po_utils.models import trl_api


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def parameters(fn) -> str:
    """``(a, b, *args, **kw)``: names and kinds only (defaults and annotations may change harmlessly)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append(prefix + p.name)
    return "(" + ", ".join(out) + ")"


@pytest.mark.parametrize("dotted, expected", sorted(trl_api.PRIVATE_API.items()))
def test_trl_private_api_signature(dotted, expected):
    try:
        fn = _resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"TRL no longer has {dotted} ({exc}); m3po_utils/models/trl_api.py relies on it — "
                    "adapt that module or pin trl to the tested range in pyproject.toml")
    got = parameters(fn)
    assert got == expected, (f"TRL changed {dotted}: it is now {got}, m3po_utils/models/trl_api.py was written "
                             f"for {expected}; adapt that module or pin trl to the tested range")


@pytest.mark.parametrize("dotted, attrs", sorted(trl_api.PRIVATE_ATTRIBUTES.items()))
def test_trl_private_attributes_still_used_by_trl(dotted, attrs):
    source = inspect.getsource(_resolve(dotted))
    for attr in attrs:
        assert re.search(rf"self\.{attr}\b", source), (
            f"TRL's {dotted} no longer uses self.{attr}; ReusedReferenceDPOTrainer in "
            "m3po_utils/models/trl_api.py sets it to switch TRL's loss — adapt it")


def test_signature_check_catches_a_change():
    """The check is not vacuous: a function with one parameter renamed does not match."""
    def _compute_loss(self, model, batch, return_outputs):   # 'inputs' renamed
        pass

    assert parameters(_compute_loss) != trl_api.PRIVATE_API["trl.DPOTrainer._compute_loss"]


def test_overrides_match_what_they_override():
    """The subclass's overrides keep TRL's parameter lists (so TRL's callers still reach them)."""
    for name in ("_compute_loss", "_set_signature_columns_if_needed"):
        ours = parameters(getattr(trl_api.ReusedReferenceDPOTrainer, name))
        assert ours == trl_api.PRIVATE_API[f"trl.DPOTrainer.{name}"], name
    assert parameters(trl_api.VisionPreferenceCollatorWithReference.torch_call) == \
        trl_api.PRIVATE_API["trl.trainer.dpo_trainer.DataCollatorForVisionPreference.torch_call"]


def test_select_pairs_cuts_qwen_patches_by_their_grids():
    """Qwen2-VL batches hold every row's patches in one tensor: selecting pairs must cut them out per row."""
    import torch

    from m3po_utils.models.trl_api import _select_pairs

    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 2], [1, 2, 4]])    # rows: chosen 0, 1; rejected 0, 1
    pixels = torch.arange(24.0)[:, None].repeat(1, 3)                     # 4 + 8 + 4 + 8 patches
    inputs = {"input_ids": torch.arange(4)[:, None].repeat(1, 5), "attention_mask": torch.ones(4, 5),
              "pixel_values": pixels, "image_grid_thw": grid, "ref_chosen_logps": torch.zeros(2)}
    sub = _select_pairs(inputs, torch.tensor([1]))
    assert sub["input_ids"][:, 0].tolist() == [1, 3] and sub["image_grid_thw"].tolist() == [[1, 2, 4], [1, 2, 4]]
    assert sub["pixel_values"][:, 0].tolist() == list(range(4, 12)) + list(range(16, 24))
    assert "ref_chosen_logps" not in sub
    import pytest
    with pytest.raises(ValueError, match="'odd'"):
        _select_pairs(inputs | {"odd": torch.zeros(7)}, torch.tensor([0]))
