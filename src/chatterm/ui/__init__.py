"""The Textual front end. Nothing here imports torch: the model loads in a worker thread."""
