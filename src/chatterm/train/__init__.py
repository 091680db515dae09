"""Training: a byte-level BPE, chat data preparation and a GPT trainer (`chatterm train`).

This sits beside the front ends: it uses the model, engine and session layers and nothing uses it.
"""
