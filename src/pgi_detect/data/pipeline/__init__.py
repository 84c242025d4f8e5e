"""From records to batches: the dataset (samples), collate (Batch), samplers, the resumable loader, the datamodule."""
