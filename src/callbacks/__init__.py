"""Lightning adapters: pick a fixed probe set, call xai/, render with viz/, send to sinks."""
