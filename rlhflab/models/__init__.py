"""Model loading, trainable-weight selection and checkpoint io."""
