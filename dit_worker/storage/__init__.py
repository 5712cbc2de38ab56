"""The one storage layer: every read and write of a local folder or an s3:// prefix (`objects`), and
the node's cache folder for objects fetched from elsewhere (`node_cache`)."""
