"""The CPU speed work of the torch backend, one concern a module: what the CPU offers (:mod:`.cpu`), packed
oneDNN convolutions (:mod:`.packing`), bf16 (:mod:`.bf16`), oneDNN Graph graphs (:mod:`.graphs`), and the
backend that puts them together (:mod:`.backend`). Private torch operators appear only in this package."""
