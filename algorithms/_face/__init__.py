"""Face-recognition building blocks shared by the face methods (not an algorithm itself:
``algorithms/__init__`` skips packages whose name starts with ``_``).

- ``heads``: CosFace / ArcFace margin heads with per-sample margins, fp32 logits.
- ``partial_fc``: the same head with its classes sharded across data-parallel ranks.
- ``model``: ``FaceNet``, a backbone with the feature-map, embedding and triplet taps.
"""

from algorithms._face.heads import MarginHead, cosine, margin_logits, margin_loss, target_with_margin

__all__ = ["MarginHead", "cosine", "margin_logits", "margin_loss", "target_with_margin"]
