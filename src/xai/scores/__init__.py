"""What explanations are scored by: faithfulness and sanity metrics, ground-truth regions,
anomaly maps and their scores, disentanglement scores, saliency segmentation."""
