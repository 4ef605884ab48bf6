"""Semantic morphing and path-mask attribution [PathMaskThesis]: `semantic` moves a code, `path_mask`
learns the mask along the path, `pipeline` runs both for a batch."""
