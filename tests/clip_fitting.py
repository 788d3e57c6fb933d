"""Fit a tiny open_clip model in a test, contrastively as CLIP is trained, so that each group of frames
pairs with its own caption: tests of CLIP-based measures (caption alignment, CLIPSIM) then have a model
whose right answer is known."""

import torch
from PIL import Image


def fit_clip_to_captions(model, preprocess, tokenizer, frame_groups, captions, steps: int, lr: float = 5e-3):
    """Train `model` in place for `steps` full-batch steps: every frame of `frame_groups[i]` (uint8 HxWx3
    arrays) against `captions[i]`. The token embedding stays frozen (49408 rows, of which the captions
    use a dozen); the seed is fixed so a fit is the same every run."""
    torch.manual_seed(0)
    pixels = torch.stack([preprocess(Image.fromarray(f)) for group in frame_groups for f in group])
    labels = torch.arange(len(frame_groups)).repeat_interleave(len(frame_groups[0]))
    texts = tokenizer(list(captions))
    model.token_embedding.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
        loss = torch.nn.functional.cross_entropy(10 * image @ text.T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model
