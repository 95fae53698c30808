"""Training data: the synthetic in-context task suite and the grain pipeline that batches it."""
