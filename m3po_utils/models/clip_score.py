"""CLIP image-text cosine for many (image, response) pairs, each distinct image and text embedded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from m3po_utils.models.clip import encode_images, encode_texts


@dataclass
class ClipScores:
    raw: np.ndarray          # cosine similarity per (image, text) pair
    truncated: np.ndarray    # True where the text was longer than CLIP's context (its end was not seen)
    images_encoded: int
    texts_encoded: int


class ClipScorer:
    """CLIP image-text cosine for many (image, response) pairs; each distinct image and text embedded once.

    ``model, preprocess, tokenizer`` as returned by :func:`m3po_utils.models.clip.load_clip` (any open_clip model).
    """

    def __init__(self, model, preprocess, tokenizer, image_batch_size: int = 64, text_batch_size: int = 256):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.image_batch_size, self.text_batch_size = image_batch_size, text_batch_size

    @property
    def context_length(self) -> int | None:
        n = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        return int(n) if n else None

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """True for texts that need more than ``context_length`` tokens (start and end tokens included)."""
        n = self.context_length
        if not n or not texts:
            return np.zeros(len(texts), dtype=bool)
        try:
            longer = self.tokenizer(list(texts), context_length=n + 1)
        except TypeError:  # a tokenizer without a context_length argument: cannot tell
            return np.zeros(len(texts), dtype=bool)
        return (longer[:, n] != 0).cpu().numpy()

    def image_embeddings(self, images: Sequence[Image.Image]):

        return encode_images(self.model, self.preprocess, list(images), batch_size=self.image_batch_size)

    def text_embeddings(self, texts: Sequence[str]):

        return encode_texts(self.model, self.tokenizer, list(texts), batch_size=self.text_batch_size)

    def score(self, image_refs: Sequence[str], texts: Sequence[str],
              load_image: Callable[[str], Image.Image]) -> ClipScores:
        """Cosine of ``texts[i]`` with the image ``load_image(image_refs[i])``, embedding each distinct one once."""
        if len(image_refs) != len(texts):
            raise ValueError(f"got {len(image_refs)} image refs but {len(texts)} texts; pass one image per text")
        if not texts:
            return ClipScores(np.zeros(0), np.zeros(0, dtype=bool), 0, 0)
        refs = list(dict.fromkeys(image_refs))
        uniq = list(dict.fromkeys(str(t) for t in texts))
        img = self.image_embeddings([load_image(r) for r in refs])
        txt = self.text_embeddings(uniq)
        r_map = {r: i for i, r in enumerate(refs)}
        r_idx = np.array([r_map[r] for r in image_refs])
        t_map = {t: i for i, t in enumerate(uniq)}
        t_idx = np.array([t_map[str(t)] for t in texts])
        raw = (img.numpy()[r_idx] * txt.numpy()[t_idx]).sum(1).astype(np.float64)
        trunc = self.truncated(uniq)[t_idx]
        return ClipScores(raw, trunc, len(refs), len(uniq))

    def score_per_pair(self, image_refs: Sequence[str], texts: Sequence[str],
                       load_image: Callable[[str], Image.Image]) -> np.ndarray:
        """The naive baseline (benchmarks only): embed the image and the text again for every pair."""
        img = self.image_embeddings([load_image(r) for r in image_refs])
        txt = self.text_embeddings([str(t) for t in texts])
        return (img * txt).sum(1).double().numpy()
