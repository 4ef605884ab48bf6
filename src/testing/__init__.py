"""What the tests and bench/ share (src itself never imports it): writers of the real on-disk
formats (`formats`), the training config composed as `python -m src.train` composes it
(`compose`), and float tolerances derived from the computation (`tolerance`)."""
