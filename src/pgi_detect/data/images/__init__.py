"""Images: decoding (EXIF, odd formats, reduced JPEG decode), the per-dataset image source, the decoded-image caches."""
