"""Inference backends behind one small interface: ``template(images) -> kernels`` and
``search(images, kernels, with_mask) -> {"boxes", "score"[, "mask"]}`` on torch tensors."""
