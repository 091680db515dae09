"""What produces replies: the backend contract, opening one by spec, the local (in-process) backend and the remote (OpenAI-compatible) one."""
