"""The remote backend: an OpenAI-compatible server over HTTP, with bounds on what a server may send and the API key kept out of sight."""
