"""What the tests and bench/ share (src itself never imports it): writers of the real on-disk
formats, and float tolerances derived from the computation."""
