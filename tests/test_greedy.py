"""Greedy means greedy: `chatterm generate CKPT --temperature 0` gives the reference greedy
continuation, for a Hugging Face GPT-2 folder (against transformers' `generate(do_sample=False)`)
and for a nanoGPT ckpt.pt (against an independent argmax loop over the reference math), with the
built-in settings (llama.cpp's filters, which never change the argmax). The checks also show
that they would notice a default that does: the old repetition penalty of 1.1 changes the output.
"""

import copy

import pytest
import torch

from chatterm.cli import main
from chatterm.engine.tokenizer import Tokenizer
from chatterm.session.sanitize import printable
from helpers import tiny_model
from test_model import reference_logits

PROMPT = "Once upon a time"
NEW_TOKENS = 24


def generate(capsys, ckpt, *flags) -> str:
    code = main(["generate", str(ckpt), "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.removesuffix("\n")


def as_printed(ids: list[int]) -> str:
    return printable(Tokenizer.gpt2().decode(ids))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1234)
    # A larger init spread than GPT-2's 0.02 makes the top logits of a random model far apart,
    # so argmax does not hinge on float rounding differences between two implementations.
    config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.3)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(folder)
    ids = torch.tensor([Tokenizer.gpt2().encode(PROMPT)])
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS,
                             attention_mask=torch.ones_like(ids), pad_token_id=config.eos_token_id)
    new = out[0, ids.size(1):].tolist()
    return folder, new[: new.index(config.eos_token_id)] if config.eos_token_id in new else new


def test_hf_gpt2_folder_matches_transformers_greedy(capsys, hf_folder):
    folder, reference = hf_folder
    assert generate(capsys, folder, "--temperature", "0") == as_printed(reference)


def test_the_old_repetition_penalty_would_change_the_hf_greedy_output(capsys, hf_folder):
    folder, reference = hf_folder
    assert generate(capsys, folder, "--temperature", "0", "--repetition-penalty", "1.1") != as_printed(reference)


@pytest.fixture(scope="module")
def nanogpt_ckpt(tmp_path_factory):
    model = tiny_model(seed=11, vocab_size=50304)  # nanoGPT pads GPT-2's vocabulary to 50304
    with torch.no_grad():
        for p in model.parameters():  # spread the logits, as above
            p.mul_(8.0) if p.dim() == 2 else None
    cfg = model.config
    args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size, bias=True,
                vocab_size=cfg.vocab_size, dropout=0.0)
    path = tmp_path_factory.mktemp("nanogpt") / "ckpt.pt"
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # as torch.compile saves it
    # Everything nanoGPT's train.py writes: the optimizer's state, the best validation loss (a
    # tensor) and its configuration globals beside the weights.
    trained = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    trained(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    config = {"out_dir": "out", "dataset": "openwebtext", "compile": True, "dtype": "bfloat16", "learning_rate": 6e-4,
              "max_iters": 600000, "init_from": "scratch", "bias": True, "wandb_log": False}
    torch.save({"model": sd, "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 1,
                "best_val_loss": torch.tensor(3.28), "config": config}, path)
    ids = Tokenizer.gpt2().encode(PROMPT)
    state = model.state_dict()
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):  # nanoGPT's sample.py with top_k=1: argmax of the last position
            ids.append(int(reference_logits(state, cfg, ids)[-1, :50257].argmax()))
    return path, ids[-NEW_TOKENS:]


def test_nanogpt_ckpt_matches_the_reference_argmax_loop(capsys, nanogpt_ckpt):
    path, reference = nanogpt_ckpt
    assert 50256 not in reference  # an end-of-text would stop us early and not the loop
    assert generate(capsys, path, "--temperature", "0") == as_printed(reference)


def test_the_old_repetition_penalty_would_change_the_nanogpt_greedy_output(capsys, nanogpt_ckpt):
    path, reference = nanogpt_ckpt
    assert generate(capsys, path, "--temperature", "0", "--repetition-penalty", "1.1") != as_printed(reference)
