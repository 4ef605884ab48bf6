"""Attribution methods with the one call shape: gradients, perturbation, propagation rules,
the CAM family, and feature visualisation."""
